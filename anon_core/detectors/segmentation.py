"""Person silhouettes: MediaPipe selfie segmentation (from `make models`) run on each person's box.

The model expects one person roughly filling a 256x256 RGB image in [0, 1]; running it on each detected person's
(slightly enlarged) crop gives a mask that follows that person's shape. The mask is kept inside the detection box,
so a silhouette never spills onto a neighbour, and people smaller than `min_height` px keep their box (too few
pixels for a useful shape).
"""

from __future__ import annotations

import cv2
import numpy as np

from anon_core.detectors.onnx_session import make_session
from anon_core.weights import ModelInfo, resolve_built


class PersonSegmenter:
    def __init__(self, weights: str | None = None, device: str = "auto", threads: int = 0, min_height: int = 64,
                 threshold: float = 0.4, pad: float = 0.1):
        self.weights = resolve_built("selfie", weights)
        self.session = make_session(self.weights.data, device, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.nchw = inp.shape[1] == 3
        self.size = (int(inp.shape[2]), int(inp.shape[3])) if self.nchw else (int(inp.shape[1]), int(inp.shape[2]))
        self.min_height, self.threshold, self.pad = int(min_height), float(threshold), float(pad)

    def info(self) -> ModelInfo:
        return ModelInfo("selfie-segmentation", self.weights.version, self.weights.sha256, self.weights.source)

    def probabilities(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Person probability (crop-sized float32) for each RGB crop."""
        h, w = self.size
        out = []
        for c in crops:  # the converted graph has batch 1 baked into its reshapes
            x = cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[None] / 255
            if self.nchw:
                x = x.transpose(0, 3, 1, 2)
            prob = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0].reshape(h, w)
            out.append(cv2.resize(prob, (c.shape[1], c.shape[0])))
        return out

    def masks(self, frame: np.ndarray, xyxy: np.ndarray) -> list[np.ndarray | None]:
        """One frame-sized boolean mask per box, or None (box masking) for small people or empty segmentations."""
        fh, fw = frame.shape[:2]
        result: list[np.ndarray | None] = [None] * len(xyxy)
        crops, where = [], []
        for i, (x1, y1, x2, y2) in enumerate(np.asarray(xyxy, np.float32)):
            if y2 - y1 < self.min_height:
                continue
            px, py = (x2 - x1) * self.pad, (y2 - y1) * self.pad
            cx1, cy1 = int(max(0, np.floor(x1 - px))), int(max(0, np.floor(y1 - py)))
            cx2, cy2 = int(min(fw, np.ceil(x2 + px))), int(min(fh, np.ceil(y2 + py)))
            if cx2 - cx1 < 4 or cy2 - cy1 < 4:
                continue
            crops.append(frame[cy1:cy2, cx1:cx2])
            where.append((i, cx1, cy1, cx2, cy2))
        for (i, cx1, cy1, cx2, cy2), p in zip(where, self.probabilities(crops)):
            m = np.zeros((fh, fw), bool)
            m[cy1:cy2, cx1:cx2] = p > self.threshold
            x1, y1, x2, y2 = xyxy[i]
            inside = np.zeros((fh, fw), bool)
            inside[int(max(0, y1)) : int(np.ceil(y2)), int(max(0, x1)) : int(np.ceil(x2))] = True
            m &= inside
            # a segmentation covering only a sliver of the box is a failure (person not centred, odd pose): use the box
            if m.sum() >= 0.15 * max(1.0, float((x2 - x1) * (y2 - y1))):
                result[i] = m
        return result
