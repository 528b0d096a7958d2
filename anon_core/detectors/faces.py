"""Face detectors registered by name: a raw network plus a multi-view inference plan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.detectors.face_models import FACE_MODELS
from anon_core.detectors.multiview import fuse_evidence, plan_views, run_views
from anon_core.weights import ModelInfo


class FaceDetector(Detector):
    classes = ("face",)
    # sub-threshold faces extend tracks through blur and profile turns (video leak, benchmarks/RESULTS.md)
    track_candidates = True

    def __init__(
        self,
        model: str | Sequence[str] = "retinaface",
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
        upscale_model: str | Sequence[str] | None = None,
        upscale_weights: str | None = None,
        score_fusion: str = "noisy_or",
        rotations: Sequence[int] = (),
        verifier: str | None = None,
        verify_min: float = 0.1,
        batch_size: int = 8,
        device: str = "auto",
        precision: str = "auto",
        threads: int = 0,
    ):
        # `model` may name several networks: each runs the native views and their evidence is fused
        # (an ensemble of two different detectors misses fewer faces than either).
        names = [model] if isinstance(model, str) else list(model)
        # `upscale_model` may name several too (archive: both networks on the 2x view as well).
        ups = [upscale_model] if isinstance(upscale_model, str) else list(upscale_model or names[:1])
        unknown = [n for n in [*names, *ups] if n not in FACE_MODELS]
        if unknown or not names or not ups:
            raise ValueError(f"unknown face model(s) {unknown}; known: {sorted(FACE_MODELS)}")
        self.model_names, self.upscale_models = names, ups
        self.upscale_model = ups[0]
        self._net_args = {"device": device, "precision": precision, "threads": threads}
        self._weights, self._upscale_weights = weights, upscale_weights
        self.threshold = float(threshold)
        # Views are decoded at a lower score so that fusion sees weak evidence from each view.
        # Fusion needs the weak per-view evidence: a face at 0.4 in two views is 0.64 after noisy-OR.
        self.candidate_threshold = float(candidate_threshold if candidate_threshold is not None
                                         else min(0.1, self.threshold))
        self.scales = tuple(float(s) for s in scales)
        self.max_side, self.tile_size, self.flip = int(max_side), int(tile_size), bool(flip)
        self.min_size, self.fuse_iou, self.batch_size = float(min_size), float(fuse_iou), int(batch_size)
        if score_fusion not in ("noisy_or", "max"):
            raise ValueError("score_fusion must be noisy_or or max")
        self.upscale_max_face, self.score_fusion = float(upscale_max_face), score_fusion
        # Quarter turns of the native views: lying and upside-down faces (benchmarks/RESULTS.md, issue 15).
        self.rotations = tuple(int(k) % 4 for k in rotations if int(k) % 4)
        # The cascade's second stage (face_cascade.py): candidates fused at >= verify_min are re-scored by the
        # verifier, whose probability is what `threshold` cuts; weaker candidates keep their fused score (all
        # below verify_min <= threshold), so they stay candidates for the tracker and are never masked alone.
        self.verifier = verifier or None
        self.verify_min = float(verify_min)
        if self.verifier:
            from anon_core.detectors.face_cascade import load_params

            self._verifier_params = load_params(self.verifier)  # a bad name fails when the detector is built
            if self.verify_min > self.threshold:
                raise ValueError("verify_min must be <= threshold (unverified candidates must stay below it)")

    def load(self) -> None:
        nets = {}
        for i, n in enumerate(self.model_names):
            nets[n] = FACE_MODELS[n](weights=self._weights if i == 0 else None, **self._net_args)
        self._native = list(nets.values())
        # The upscaled views hunt small faces only; a cheaper network can do that job (see models/*.md).
        ups = {}
        for i, n in enumerate(self.upscale_models):
            ups[n] = nets.get(n) or FACE_MODELS[n](weights=self._upscale_weights if i == 0 else None, **self._net_args)
        self._upscale_all = list(ups.values())
        self._upscale = self._upscale_all[0]
        self._crop_nets = {}
        if self.verifier:
            for n in self._verifier_params.crop_nets:
                self._crop_nets[n] = nets.get(n) or ups.get(n) or FACE_MODELS[n](**self._net_args)

    @property
    def native_nets(self) -> list:
        self.ensure_loaded()
        return self._native

    @property
    def upscale_net(self):
        self.ensure_loaded()
        return self._upscale

    @property
    def net(self):
        return self.native_nets[0]

    def model_infos(self) -> list[ModelInfo]:
        nets = [*self._native, *(n for n in self._upscale_all if n not in self._native)]
        nets += [n for n in self._crop_nets.values() if n not in nets]
        return [n.info() for n in nets]

    def params(self) -> dict:
        return {
            "threshold": self.threshold,
            "scales": list(self.scales),
            "flip": self.flip,
            "max_side": self.max_side,
            "tile_size": self.tile_size,
            "upscale_max_face": self.upscale_max_face,
            "models": list(self.model_names),
            "upscale_model": self.upscale_model if len(self.upscale_models) == 1 else list(self.upscale_models),
            "score_fusion": self.score_fusion,
            "rotations": list(self.rotations),
            "verifier": self.verifier,
            "verify_min": self.verify_min,
        }

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        """Faces scoring >= min_score. Views are always decoded at candidate_threshold, so a lower min_score only
        adds weaker faces and never changes the fused score of the others."""
        threshold = min_score
        views = []
        for i, f in enumerate(frames):
            views += plan_views(f.shape[:2], i, self.scales, self.max_side, self.flip, self.tile_size, self.rotations)
        cand = min(self.candidate_threshold, self.threshold)
        native = [v for v in views if v.scale <= 1]
        upscaled = [v for v in views if v.scale > 1]
        per_frame: dict[int, list] = defaultdict(list)
        self.ensure_loaded()
        runs = [(net, native) for net in self.native_nets] + [(net, upscaled) for net in self._upscale_all]
        for net, vs in runs:
            if vs:
                for i, parts in run_views(net, frames, vs, cand, self.batch_size).items():
                    per_frame[i].extend(parts)
        out = []
        for i, f in enumerate(frames):
            d, evidence, rot = fuse_evidence(per_frame.get(i, []), self.fuse_iou, f.shape[1], f.shape[0], "face",
                                             self.upscale_max_face, self.score_fusion)
            if self.verifier and len(d):
                d = self._verify(f, d, evidence, rot)
            keep = d.scores >= threshold
            if self.min_size:
                keep &= d.wh.min(axis=1) >= self.min_size
            out.append(d[keep])
        return out

    def _verify(self, frame: np.ndarray, d: Detections, evidence: dict, rot: np.ndarray) -> Detections:
        from anon_core.detectors.face_cascade import verify

        scores = verify(frame, d, evidence, rot, self._verifier_params, self._crop_nets, self.verify_min)
        return Detections(d.xyxy, scores, d.labels, landmarks=d.landmarks)


@register_detector("face")
def _face(**params) -> FaceDetector:
    return FaceDetector(**params)
