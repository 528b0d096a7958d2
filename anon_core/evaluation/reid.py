"""Re-identification attack: can a face recogniser still tell who is under the mask?

For every annotated face an attacker who knows where the face is (the ground-truth box) embeds the
output's pixels there with an independent recogniser (dlib's ResNet, not one of anon's detectors) and
looks it up in a gallery of the ORIGINAL crops of all annotated faces. Rank-1 re-identification rate =
share of faces whose nearest gallery entry is their own original. The gallery holds the very same photo
(same pose, light and background), so this is the strongest closed-set attack: a mask that defeats it
defeats look-ups against other photos of the person too.

Controls: `unmasked` (the input re-encoded like an output, nothing masked) must be ~100 %; `fill` (a
solid box over every face) must fall to chance (1 / gallery size). Faces below 10 px are not evaluated.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from anon_core.evaluation.metrics import SIZE_BUCKETS

MIN_SIDE = 10.0


def jpeg_roundtrip(rgb: np.ndarray, quality: int = 92) -> np.ndarray:
    """What a published JPEG output decodes to (the pipeline's default encoder quality)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def band_of(side: float) -> str:
    for lo, hi in SIZE_BUCKETS[1:]:
        if lo <= side < hi:
            return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"
    return "small"


@dataclass
class ReidAttack:
    """add() images one by one (original, {variant: output}, GT boxes); report() ranks every probe."""

    embedder: object = None
    gallery: list[np.ndarray] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    probes: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embedder is None:
            from anon_core.subjects.embedder import FaceEmbedder

            self.embedder = FaceEmbedder(upsample_to=0)  # the attacker as measured in RESULTS (re-id)

    def add(self, original: np.ndarray, outputs: dict[str, np.ndarray], boxes: np.ndarray) -> None:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
        boxes = boxes[side >= MIN_SIDE]
        if not len(boxes):
            return
        self.gallery.append(self.embedder.embed(original, boxes))
        self.bands += [band_of(s) for s in side[side >= MIN_SIDE]]
        for name, out in outputs.items():
            self.probes.setdefault(name, []).append(self.embedder.embed(out, boxes))

    def report(self) -> dict:
        if not self.gallery:
            return {"n_faces": 0}
        g = np.concatenate(self.gallery)
        ok = np.isfinite(g).all(axis=1)
        bands = np.asarray(self.bands)
        res: dict = {"n_faces": int(ok.sum()), "gallery_size": int(ok.sum()),
                     "chance": round(1.0 / max(int(ok.sum()), 1), 5),
                     "by_size_n": {b: int((ok & (bands == b)).sum()) for b in sorted(set(bands))}, "rank1": {}}
        gv = np.where(ok[:, None], g, np.inf)
        for name, parts in self.probes.items():
            p = np.concatenate(parts)
            hit = np.zeros(len(p), bool)
            for i in np.flatnonzero(ok):
                if not np.isfinite(p[i]).all():
                    continue  # the recogniser found nothing usable: not re-identified
                d = np.linalg.norm(gv - p[i], axis=1)
                hit[i] = int(np.argmin(d)) == i
            rate = {"all": round(float(hit[ok].mean()), 4)}
            for b in sorted(set(bands)):
                m = ok & (bands == b)
                rate[b] = round(float(hit[m].mean()), 4) if m.any() else None
            res["rank1"][name] = rate
        return res


def run_attack(items: Iterable[tuple[np.ndarray, np.ndarray, dict[str, Callable[[np.ndarray], np.ndarray]]]],
               embedder=None) -> dict:
    """items: (original RGB, GT face boxes, {variant: original -> published RGB}); see the module docstring."""
    attack = ReidAttack(embedder)
    for rgb, boxes, variants in items:
        attack.add(rgb, {k: f(rgb) for k, f in variants.items()}, boxes)
    return attack.report()


def _gt_masker(spec):
    """A Masker that masks given boxes with `spec` (MaskSpec) as if they were face detections."""
    from anon_core.detections import Detections
    from anon_core.masking import Masker

    masker = Masker({"face": spec})

    def apply(rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        n = len(boxes)
        d = Detections(xyxy=np.asarray(boxes, np.float32).reshape(-1, 4), scores=np.ones(n, np.float32),
                       labels=np.array(["face"] * n, dtype=object))
        return masker.apply(rgb, d)[0]

    return apply


def _image(masked) -> np.ndarray:
    return masked[0] if isinstance(masked, tuple) else masked  # Anonymizer.mask returns (image, n)


def validation_variants(mask_detected: Callable[[np.ndarray, object], np.ndarray], detections, boxes: np.ndarray,
                        face_spec) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """What `anon validate --reid` attacks for one image: controls, the pipeline's output, its mask on GT boxes."""
    from anon_core.masking.apply import MaskSpec

    oracle = _gt_masker(face_spec)
    fill = _gt_masker(MaskSpec("fill", "box", 1.0, {"color": [0, 0, 0]}))
    return {
        "unmasked": lambda rgb: jpeg_roundtrip(rgb),
        "pipeline": lambda rgb: jpeg_roundtrip(_image(mask_detected(rgb, detections))),
        "mask_on_gt_boxes": lambda rgb: jpeg_roundtrip(oracle(rgb, boxes)),
        "fill": lambda rgb: jpeg_roundtrip(fill(rgb, boxes)),
    }


def validate_reid(pairs, load: Callable[[str], np.ndarray], mask_detected, operating: dict[str, float],
                  face_spec, limit: int | None = None) -> dict:
    """Re-identification block of `anon validate`: (gt, detections) pairs from the run, images re-loaded.

    `pipeline` = the configured masks on what the detectors found at their operating threshold (misses
    stay visible, as in a real output); `mask_on_gt_boxes` = the same mask on every annotated face
    (the mask's own strength, detection aside).
    """
    def items():
        for gt, det in pairs[:limit] if limit else pairs:
            g = gt.for_class("face")
            if not len(g.boxes):
                continue
            op = det[det.scores >= np.array([operating.get(str(lb), math.inf) for lb in det.labels])] if len(det) \
                else det
            yield load(gt.path or gt.file), g.boxes, validation_variants(mask_detected, op, g.boxes, face_spec)

    out = run_attack(items())
    out["note"] = ("rank-1 re-identification of each annotated face (>= 10 px) against a gallery of the original "
                   "crops (dlib ResNet); unmasked and fill are the controls (~100 % and chance)")
    return out
