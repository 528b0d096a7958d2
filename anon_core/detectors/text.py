"""Text regions from the PP-OCRv4 detection network shipped in the `rapidocr-onnxruntime` wheel.

Only the detection ONNX file is used (no recognition): a DB-style probability map is thresholded and each
connected region becomes a box, grown by the "unclip" margin DB networks are trained to predict shrunk text by.
The same network serves the optional `text` class and the plate detector (inside vehicle regions).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from anon_core.boxes import nms
from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.detectors.onnx_session import make_session
from anon_core.weights import ModelInfo, Weights, package_version, resolve

PPOCR_DIST, PPOCR_MODULE = "rapidocr-onnxruntime", "rapidocr_onnxruntime"
PPOCR_FILE = "models/ch_PP-OCRv4_det_infer.onnx"


def packaged_ppocr(file: str, what: str) -> Weights:
    """A PP-OCR model file inside the wheel, found without importing the package (its __init__ needs GUI OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec(PPOCR_MODULE)
    path = Path(next(iter(spec.submodule_search_locations))) / file if spec else None
    if path is None or not path.exists():
        raise FileNotFoundError(f"PP-OCR {what} model not found: install {PPOCR_DIST} "
                                f"(`pip install --no-deps {PPOCR_DIST}==1.4.4`; `make setup` does this)")
    return Weights(path.read_bytes(), f"pkg://{PPOCR_DIST}/{PPOCR_MODULE}/{file}", package_version(PPOCR_DIST))


class PPOCRDet:
    """Raw PP-OCR text detection: RGB image of any size in, axis-aligned text boxes with scores out."""

    def __init__(self, weights: str | None = None, device: str = "auto", threads: int = 0):
        self.weights = resolve(weights) if weights else packaged_ppocr(PPOCR_FILE, "text detection")
        self.session = make_session(self.weights.data, device, threads)
        self.input_name = self.session.get_inputs()[0].name

    def info(self) -> ModelInfo:
        return ModelInfo("ppocrv4-det", self.weights.version, self.weights.sha256, self.weights.source)

    def probability(self, rgb: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
        """Text probability map for the image resized by `scale` (rounded to multiples of 32)."""
        h, w = rgb.shape[:2]
        nh, nw = max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)
        interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
        img = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb
        # PaddleOCR feeds OpenCV's BGR order normalised to [-1, 1]
        x = (img[..., ::-1].astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
        prob = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0][0, 0]
        return prob, nw / w, nh / h

    def boxes(self, rgb: np.ndarray, scale: float = 1.0, bin_threshold: float = 0.3, box_threshold: float = 0.5,
              unclip: float = 1.6, min_side: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned text boxes (image pixels) and their mean probability."""
        prob, sx, sy = self.probability(rgb, scale)
        binary = (prob > bin_threshold).astype(np.uint8)
        binary = cv2.dilate(binary, np.ones((2, 2), np.uint8))
        n, lab, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        out_b, out_s = [], []
        for k in range(1, n):
            x, y, w, h, a = stats[k]
            if min(w, h) < 2:
                continue
            score = float(prob[y : y + h, x : x + w][lab[y : y + h, x : x + w] == k].mean())
            if score < box_threshold:
                continue
            # DB "unclip": the net predicts text shrunk by d = A * (1 - r^2) / L; grow it back by A * unclip / L
            d = a * unclip / max(2.0 * (w + h), 1.0)
            out_b.append([(x - d) / sx, (y - d) / sy, (x + w + d) / sx, (y + h + d) / sy])
            out_s.append(score)
        if not out_b:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        b = np.asarray(out_b, np.float32)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, rgb.shape[1])
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, rgb.shape[0])
        s = np.asarray(out_s, np.float32)
        keep = (b[:, 2] - b[:, 0] >= min_side) & (b[:, 3] - b[:, 1] >= min_side)
        return b[keep], s[keep]


@lru_cache(maxsize=2)
def shared_ppocr(weights: str | None = None, device: str = "auto", threads: int = 0) -> PPOCRDet:
    return PPOCRDet(weights, device, threads)


class TextDetector(Detector):
    """Optional `text` class: screens, name tags, house numbers, signs."""

    classes = ("text",)

    def __init__(self, weights: str | None = None, threshold: float = 0.6, max_side: int = 1280,
                 min_side: int = 736, device: str = "auto", threads: int = 0):
        self._args = (weights, device, int(threads))
        self.threshold, self.max_side, self.min_side = float(threshold), int(max_side), int(min_side)

    def load(self) -> None:
        self.net = shared_ppocr(*self._args)  # one loaded network per configuration, shared with the plate search

    def model_infos(self) -> list[ModelInfo]:
        return [self.net.info()]

    def scale_for(self, shape: tuple[int, ...]) -> float:
        """Small images are upscaled so the shorter side reaches min_side (PP-OCR's own rule), capped by max_side."""
        h, w = shape[:2]
        s = max(1.0, self.min_side / min(h, w))
        return min(s, self.max_side / max(h, w)) if max(h, w) * s > self.max_side else s

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        out = []
        for f in frames:
            b, s = self.net.boxes(f, self.scale_for(f.shape), box_threshold=min_score)
            keep = nms(b, s, 0.5)
            out.append(Detections(b[keep], s[keep], np.full(len(keep), "text", object)))
        return out


@register_detector("ppocr_text")
def _text(**params) -> TextDetector:
    return TextDetector(**params)
