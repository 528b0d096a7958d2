"""Person-conditioned heads: a detected person whose head region holds no detected face gets that region masked.

A back of a head, a deep profile or a face under a hat still identifies someone, and a face detector misses
exactly those; a person detector does not care which way the head points. The head region is placed from
the person box by a geometry measured on annotated faces inside detected persons (`fit_geometry`), in units
of the person box's width (a person cut off at the waist or the knees keeps its width, not its height).
Off by default (`heads.enabled`); its cost in over-masking is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from anon_core.detections import Detections
from anon_core.schema import SchemaError, check_choices


@dataclass
class HeadSettings:
    """heads.*: mask the head region of every person (NanoDet, score >= person_threshold) with no face in it.

    views: "whole" uses NanoDet's whole-frame view only (the view the default plate search already computes,
    shared through SharedWork: no extra network pass under policy=default), "tiles" adds its tiles (small people).
    Geometry, in person-box widths from the box's top-left corner: head centre x = centre_x, head top = top,
    head width = width, head height = height (defaults: medians over ../shared/data/faces, see
    benchmarks/face_coverage.py). A confident face whose centre lies in the head region keeps the head unmasked
    (the face mask covers it).
    """

    enabled: bool = False
    person_threshold: float = 0.5
    views: Literal["whole", "tiles"] = "whole"
    # medians of 2485 GT faces paired with NanoDet persons (tiles view, score >= 0.1) on ../shared/data/faces
    # (benchmarks/face_coverage.py; the 5 per-fold fits are within +-0.02 of these, results/face_coverage_faces.json
    # "head_geometry_folds")
    centre_x: float = 0.48
    top: float = 0.155
    width: float = 0.38
    height: float = 0.47

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.person_threshold <= 1.0:
            raise SchemaError("person_threshold", f"must be in [0, 1]; got {self.person_threshold!r}")
        for k in ("width", "height"):
            if not 0.05 <= getattr(self, k) <= 2.0:
                raise SchemaError(k, f"must be in [0.05, 2] person widths; got {getattr(self, k)!r}")


def head_regions(persons: np.ndarray, s: HeadSettings) -> np.ndarray:
    """(N, 4) head boxes of (N, 4) person boxes."""
    p = np.asarray(persons, np.float32).reshape(-1, 4)
    pw = p[:, 2] - p[:, 0]
    cx = p[:, 0] + s.centre_x * pw
    y1 = p[:, 1] + s.top * pw
    hw, hh = s.width * pw, s.height * pw
    # a head never reaches below its person box
    y2 = np.minimum(y1 + hh, p[:, 3])
    return np.stack([cx - hw / 2, y1, cx + hw / 2, y2], 1).astype(np.float32)


def heads_without_faces(persons: Detections, faces: Detections, s: HeadSettings) -> Detections:
    """Head regions (label "face", data["head"] True) of the persons with no confident face inside."""
    if not len(persons):
        return Detections.empty()
    p = persons[persons.scores >= s.person_threshold]
    if not len(p):
        return Detections.empty()
    heads = head_regions(p.xyxy, s)
    keep = np.ones(len(heads), bool)
    if len(faces):
        c = (faces.xyxy[:, :2] + faces.xyxy[:, 2:]) / 2
        inside = ((c[None, :, 0] >= heads[:, None, 0]) & (c[None, :, 0] <= heads[:, None, 2])
                  & (c[None, :, 1] >= heads[:, None, 1]) & (c[None, :, 1] <= heads[:, None, 3]))
        keep = ~inside.any(1)
    keep &= heads[:, 3] > heads[:, 1]
    n = int(keep.sum())
    return Detections(heads[keep], p.scores[keep], np.full(n, "face", object),
                      data={"confident": np.ones(n, bool), "head": np.ones(n, bool)})


@dataclass
class SmallFaceSettings:
    """small_faces.*: face candidates below their detector's threshold are masked anyway when they are small.

    A 10-20 px face scores lower than a large one (less evidence in the pixels), and a missed small face is the
    commonest leak; a false mask on something that small costs few pixels. A face candidate with
    min(w, h) < max_side and score >= threshold is marked confident (masked, tracked as confident); max_side 0:
    off. Default 24 px / 0.3: picked by 5-fold CV on ../shared/data/faces (leak 10.9 -> 6.6 %, 10-24 px
    14.0 -> 7.7 %, over-masking +0.14 points; precision of what is masked 0.815 -> 0.576), benchmarks/RESULTS.md.
    """

    max_side: float = 24.0
    threshold: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_side <= 256.0:
            raise SchemaError("max_side", f"must be in [0, 256] px (0: off); got {self.max_side!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise SchemaError("threshold", f"must be in (0, 1]; got {self.threshold!r}")

    def promote(self, d: Detections, label: str = "face") -> np.ndarray:
        """The detections this rule marks confident (a boolean row mask; all False when off)."""
        if self.max_side <= 0 or not len(d):
            return np.zeros(len(d), bool)
        side = np.minimum(d.wh[:, 0], d.wh[:, 1])
        return (d.labels == label) & (side < self.max_side) & (d.scores >= self.threshold)


def append_heads(d: Detections, heads: Detections) -> Detections:
    """d with the head regions appended; per-row data keys of d are kept (filled with False/0 for heads)."""
    if not len(heads):
        return d
    if not len(d):
        return heads
    data = dict(heads.data)
    for k, v in d.data.items():
        if k not in data and isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == len(d):
            data[k] = np.zeros((len(heads), *v.shape[1:]), v.dtype)
    if "head" not in d.data:
        d = Detections(d.xyxy, d.scores, d.labels, d.landmarks, d.masks, d.track_ids,
                       {**d.data, "head": np.zeros(len(d), bool)})
    lm = None
    if d.landmarks is not None and d.landmarks.ndim == 3:
        lm = np.full((len(heads), *d.landmarks.shape[1:]), np.nan, np.float32)  # no landmarks for a head
    h = Detections(heads.xyxy, heads.scores, heads.labels, lm,
                   None if d.masks is None else [None] * len(heads),
                   None if d.track_ids is None else np.full(len(heads), -1), data)
    return Detections.merge([d, h])


def fit_geometry(faces: list[np.ndarray], persons: list[np.ndarray]) -> dict[str, float]:
    """Median head geometry (HeadSettings fields) from annotated faces that sit in the top part of one person box.

    faces, persons: per image (N, 4) GT face boxes and (M, 4) detected person boxes. A face is paired with the
    narrowest person box whose upper half holds the face's centre and that is at least as wide as the face.
    """
    rows = []
    for fb, pb in zip(faces, persons):
        fb, pb = np.asarray(fb, float).reshape(-1, 4), np.asarray(pb, float).reshape(-1, 4)
        if not len(fb) or not len(pb):
            continue
        pw, ph = pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]
        for f in fb:
            cx, cy, fw, fh = (f[0] + f[2]) / 2, (f[1] + f[3]) / 2, f[2] - f[0], f[3] - f[1]
            ok = ((cx >= pb[:, 0]) & (cx <= pb[:, 2]) & (cy >= pb[:, 1]) & (cy <= pb[:, 1] + ph / 2)
                  & (pw >= fw) & (pw <= 6 * fw))
            if not ok.any():
                continue
            j = np.flatnonzero(ok)[np.argmin(pw[ok])]
            rows.append(((cx - pb[j, 0]) / pw[j], (f[1] - pb[j, 1]) / pw[j], fw / pw[j], fh / pw[j]))
    if not rows:
        return {}
    m = np.median(np.asarray(rows), 0)
    return {"centre_x": float(m[0]), "top": float(m[1]), "width": float(m[2]), "height": float(m[3]),
            "n_pairs": len(rows)}
