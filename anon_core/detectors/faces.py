"""Face detectors registered by name: a raw network plus a multi-view inference plan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anon_core.detections import Detections
from anon_core.detectors.base import register_detector
from anon_core.detectors.face_models import FACE_MODELS
from anon_core.detectors.multiview import fuse, plan_views, run_views
from anon_core.weights import ModelInfo


class FaceDetector:
    classes = ("face",)

    def __init__(
        self,
        model: str = "retinaface",
        weights: str | None = None,
        threshold: float = 0.5,
        candidate_threshold: float | None = None,
        scales: Sequence[float] = (1.0,),
        max_side: int = 1920,
        tile_size: int = 960,
        flip: bool = False,
        min_size: float = 0.0,
        fuse_iou: float = 0.4,
        upscale_max_face: float = 48.0,
        upscale_model: str | None = None,
        upscale_weights: str | None = None,
        score_fusion: str = "noisy_or",
        batch_size: int = 8,
        device: str = "auto",
        precision: str = "auto",
        threads: int = 0,
    ):
        self.net = FACE_MODELS[model](weights=weights, device=device, precision=precision, threads=threads)
        # The upscaled views hunt small faces only; a cheaper network can do that job (see models/*.md).
        self.upscale_net = self.net
        if upscale_model and upscale_model != model:
            self.upscale_net = FACE_MODELS[upscale_model](weights=upscale_weights, device=device,
                                                          precision=precision, threads=threads)
        self.threshold = float(threshold)
        # Views are decoded at a lower score so that fusion sees weak evidence from each view.
        self.candidate_threshold = float(candidate_threshold if candidate_threshold is not None else threshold)
        self.scales = tuple(float(s) for s in scales)
        self.max_side, self.tile_size, self.flip = int(max_side), int(tile_size), bool(flip)
        self.min_size, self.fuse_iou, self.batch_size = float(min_size), float(fuse_iou), int(batch_size)
        if score_fusion not in ("noisy_or", "max"):
            raise ValueError("score_fusion must be noisy_or or max")
        self.upscale_max_face, self.score_fusion = float(upscale_max_face), score_fusion

    def info(self) -> ModelInfo:
        return self.net.info()

    def infos(self) -> list[ModelInfo]:
        nets = [self.net] if self.upscale_net is self.net else [self.net, self.upscale_net]
        return [n.info() for n in nets]

    def params(self) -> dict:
        return {
            "threshold": self.threshold,
            "scales": list(self.scales),
            "flip": self.flip,
            "max_side": self.max_side,
            "tile_size": self.tile_size,
            "upscale_max_face": self.upscale_max_face,
            "upscale_model": self.upscale_net.name,
            "score_fusion": self.score_fusion,
        }

    def detect(self, frames: Sequence[np.ndarray], min_score: float | None = None) -> list[Detections]:
        """Faces at or above the threshold (or down to min_score, for a tracker's second stage)."""
        threshold = self.threshold if min_score is None else min(self.threshold, float(min_score))
        views = []
        for i, f in enumerate(frames):
            views += plan_views(f.shape[:2], i, self.scales, self.max_side, self.flip, self.tile_size)
        cand = min(self.candidate_threshold, threshold)
        if self.upscale_net is self.net:
            per_frame = run_views(self.net, frames, views, cand, self.batch_size)
        else:
            per_frame = run_views(self.net, frames, [v for v in views if v.scale <= 1], cand, self.batch_size)
            up = run_views(self.upscale_net, frames, [v for v in views if v.scale > 1], cand, self.batch_size)
            for i, parts in up.items():
                per_frame[i].extend(parts)
        out = []
        for i, f in enumerate(frames):
            d = fuse(per_frame.get(i, []), self.fuse_iou, f.shape[1], f.shape[0], "face", self.upscale_max_face,
                     self.score_fusion)
            keep = d.scores >= threshold
            if self.min_size:
                keep &= d.wh.min(axis=1) >= self.min_size
            out.append(d[keep])
        return out


@register_detector("face")
def _face(**params) -> FaceDetector:
    return FaceDetector(**params)
