"""A learned plate score: boosted trees over what the search already knows about each candidate.

The hand rule of `plate_verify.verified_scores` multiplies the text score by how plate-like the reading is. It
cannot weigh the other evidence the search holds for free: where the candidate sits on its vehicle (plates are
in the lower part, ~1/10-1/3 of the vehicle's width), how sure NanoDet is of that vehicle, the candidate's size
and shape, how confident the recogniser was, and how these combine (a sure vehicle makes a half-read plate
likelier). 100 depth-2 gradient-boosted trees over those eleven columns are fitted on ../shared/data/plates by
`benchmarks/plates_rescore.py`, which cross-validates them (nested: trees and threshold of each fold chosen
without that fold, five shuffles) against the hand rule and a logistic regression, and writes them to
`params/plate_rescore.json`; they are evaluated here in numpy (no sklearn at run time).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from anon_core.boxes import intersection_over_first
from anon_core.detections import Detections
from anon_core.detectors.face_cascade import Trees
from anon_core.detectors.plate_verify import plate_score, reading_shape
from anon_core.weights import ModelInfo

PARAMS = Path(__file__).resolve().parent / "params" / "plate_rescore.json"

FEATURES = (
    "text_score",  # PP-OCR detection score (x0.9 outside every vehicle, as the search sets it)
    "plate_score",  # the hand rule's reading score in [0, 1]
    "read_conf",  # mean character confidence of the reading
    "n_alnum",  # ASCII letters/digits read, clipped to 12
    "has_digit",
    "log_height",  # log2 of the box height in frame pixels
    "log_aspect",  # log2 of width / height
    "in_vehicle",  # largest share of the box inside one vehicle box (NanoDet, score >= 0.1)
    "vehicle_score",  # score of the best vehicle holding >= 80 % of the box, else 0
    "rel_y",  # box centre's height inside that vehicle (0 top, 1 bottom), 0.5 without one
    "rel_w",  # box width / that vehicle's width, 0 without one
)


def candidate_features(boxes: np.ndarray, text_scores: np.ndarray, readings: Sequence[tuple[str, float]],
                       vehicles: Detections) -> np.ndarray:
    """One row of FEATURES per candidate box (frame pixels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(b)
    out = np.zeros((n, len(FEATURES)), np.float64)
    if not n:
        return out
    w, h = np.maximum(b[:, 2] - b[:, 0], 1.0), np.maximum(b[:, 3] - b[:, 1], 1.0)
    out[:, 0] = text_scores
    for i, (text, conf) in enumerate(readings):
        n_alnum, has_digit = reading_shape(text)
        out[i, 1:5] = plate_score(text, conf), conf, min(n_alnum, 12), has_digit
    out[:, 5], out[:, 6] = np.log2(h), np.log2(w / h)
    out[:, 9] = 0.5
    v = vehicles[vehicles.scores >= 0.1] if len(vehicles) else vehicles
    if len(v):
        inside = intersection_over_first(b, v.xyxy)  # (n, m)
        out[:, 7] = inside.max(1)
        holds = np.where(inside >= 0.8, v.scores[None, :], -1.0)
        best = holds.argmax(1)
        has = holds.max(1) >= 0
        vb = v.xyxy[best]
        vw, vh = np.maximum(vb[:, 2] - vb[:, 0], 1.0), np.maximum(vb[:, 3] - vb[:, 1], 1.0)
        out[:, 8] = np.where(has, v.scores[best], 0.0)
        out[:, 9] = np.where(has, ((b[:, 1] + b[:, 3]) / 2 - vb[:, 1]) / vh, 0.5)
        out[:, 10] = np.where(has, w / vw, 0.0)
    return out


@dataclass(frozen=True)
class Rescorer:
    """The trees and the threshold cross-validation chose for their probability (mapped to 0.5, see `score`)."""

    trees: Trees
    threshold: float
    info: ModelInfo

    def score(self, x: np.ndarray, boxes: np.ndarray, large_height: float = 128.0) -> np.ndarray:
        """Probability p (after `context_rule`) mapped by p ** g with g = log 0.5 / log threshold: monotone, so every
        operating point stays reachable, and the cross-validated threshold lands on 0.5 like the other detectors'
        scores (the probability itself sits low, ~0.04: a few hard plates score barely above the false lines)."""
        g = np.log(0.5) / np.log(self.threshold)
        return np.power(context_rule(self.trees.predict(x), x, boxes, large_height), g).astype(np.float32)


def context_rule(p: np.ndarray, x: np.ndarray, boxes: np.ndarray, large_height: float = 128.0,
              sure_vehicle: float = 0.2) -> np.ndarray:
    """Where the context cannot vouch for a candidate, the reading must: its probability is multiplied by the
    reading's plate_score when it is at least `large_height` tall (read with pixels to spare: the space shuttle's
    side in the demo video) or not on a vehicle NanoDet gives at least `sure_vehicle` (on ../shared/data/plates
    every plate sits on one scoring >= 0.21, every unreadable one on >= 0.33; without this rule the trees, which
    never saw such a case, let blank text boxes on the demo video's maybe-vehicle at 0.10 through)."""
    tall = (np.asarray(boxes)[:, 3] - np.asarray(boxes)[:, 1]) >= large_height
    weak = x[:, FEATURES.index("vehicle_score")] < sure_vehicle
    return np.where(tall | weak, p * x[:, FEATURES.index("plate_score")], p)


@lru_cache(maxsize=4)
def load_rescorer(path: str | None = None) -> Rescorer:
    """The fitted trees (a JSON file written by benchmarks/plates_rescore.py --write-params), with their card."""
    data = Path(path or PARAMS).read_bytes()
    d = json.loads(data)
    if tuple(d["model"]["features"]) != FEATURES:
        raise ValueError(f"plate rescorer was fitted on {d['model']['features']}, this build computes {FEATURES}")
    info = ModelInfo("plate-rescore-gbt", "1", hashlib.sha256(data).hexdigest(),
                     str(path) if path else "anon_core/detectors/params/plate_rescore.json", "Apache-2.0")
    return Rescorer(Trees.from_dict(d["model"]), float(d["threshold"]), info)


def learned_scores(rescorer: Rescorer, reader, frame: np.ndarray, boxes: np.ndarray, text_scores: np.ndarray,
                   vehicles: Detections, large_height: float = 128.0) -> np.ndarray:
    """Scores of the candidates in `frame` (their readings are neither kept nor logged)."""
    if not len(boxes):
        return np.zeros(0, np.float32)
    x = candidate_features(boxes, text_scores, reader.read(frame, boxes), vehicles)
    return rescorer.score(x, boxes, large_height)
