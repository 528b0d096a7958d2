"""Second stage of the recall-first face cascade: re-score each fused candidate.

Stage 1 (`faces.py`) decodes every view at a low threshold and fuses them, so nearly every face is a candidate
and so are many textures. Stage 2, here, looks at each candidate again and replaces its noisy-OR score with the
probability of a small gradient-boosted model over:

- the evidence of each view (per-network, per-scale, per-rotation best scores) and the noisy-OR score;
- size and shape of the box, and the geometry of its five landmarks (eyes level and apart, nose between them,
  mouth below): textures that fire a face detector rarely have a face's layout;
- a second look: a square crop of `context` x the box around the candidate, resampled to `crop` px (small faces
  are upscaled, so the network sees them at a size it was trained on), run through each verifier network; its
  best score on a box that agrees with the candidate's (IoU) and that agreement.

The model is trained on WIDER train (`../shared/data/faces_train`) and its threshold chosen by k-fold CV over the
dev set: `python benchmarks/face_cascade.py fit` writes the parameter file (`params/<name>.json`, committed)
with the recipe recorded in it; `models/face_cascade.md` has the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from anon_core.boxes import iou_matrix
from anon_core.detections import Detections

PARAMS_DIR = Path(__file__).resolve().parent / "params"


@dataclass(frozen=True)
class Trees:
    """Gradient-boosted regression trees for a binary log-odds (the export of sklearn's GradientBoostingClassifier).

    Each tree is four arrays over its nodes: feature (-1 at a leaf), threshold, left and right child, value.
    """

    features: tuple[str, ...]
    init: float
    learning_rate: float
    trees: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> Trees:
        trees = tuple(
            (np.asarray(t["feature"], np.int64), np.asarray(t["threshold"], np.float64),
             np.asarray(t["left"], np.int64), np.asarray(t["right"], np.int64), np.asarray(t["value"], np.float64))
            for t in d["trees"]
        )
        return cls(tuple(d["features"]), float(d["init"]), float(d["learning_rate"]), trees)

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(-1, len(self.features))
        out = np.full(len(x), self.init)
        rows = np.arange(len(x))
        for feat, thr, left, right, value in self.trees:
            node = np.zeros(len(x), np.int64)
            while True:
                f = feat[node]
                inner = f >= 0
                if not inner.any():
                    break
                go_left = x[rows, np.maximum(f, 0)] <= thr[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            out += self.learning_rate * value[node]
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.log_odds(x)))


def export_gradient_boosting(model, names: Sequence[str]) -> dict:
    """A fitted sklearn GradientBoostingClassifier (binary) as the dict `Trees.from_dict` reads (sklearn is needed
    only to fit, never to evaluate)."""
    trees = []
    for est in model.estimators_[:, 0]:
        t = est.tree_
        trees.append({"feature": [int(f) if left >= 0 else -1 for f, left in zip(t.feature, t.children_left)],
                      "threshold": [round(float(v), 6) for v in t.threshold],
                      "left": [int(v) for v in t.children_left], "right": [int(v) for v in t.children_right],
                      "value": [round(float(v), 6) for v in t.value[:, 0, 0]]})
    prior = model.init_.class_prior_[1]
    return {"features": list(names), "init": float(np.log(prior / (1 - prior))),
            "learning_rate": model.learning_rate, "trees": trees}


@dataclass(frozen=True)
class VerifierParams:
    name: str
    views: tuple[str, ...]  # evidence keys the model reads (absent views read 0)
    crop_nets: tuple[str, ...]  # networks of the second look
    crop: int  # second-look input side in px (a multiple of 32)
    context: float  # crop side / candidate box side
    model: Trees
    recipe: dict


@lru_cache(maxsize=8)
def load_params(name_or_path: str) -> VerifierParams:
    """`name` of a committed file under params/ or a path to one."""
    p = Path(name_or_path)
    if not p.suffix:
        p = PARAMS_DIR / f"{name_or_path}.json"
    if not p.is_file():
        known = sorted(q.stem for q in PARAMS_DIR.glob("*.json"))
        raise ValueError(f"face verifier {name_or_path!r} not found; known: {known}")
    d = json.loads(p.read_text())
    return VerifierParams(d["name"], tuple(d["views"]), tuple(d["crop_nets"]), int(d["crop"]), float(d["context"]),
                          Trees.from_dict(d["model"]), d.get("recipe", {}))


def geometry_features(dets: Detections, rot: np.ndarray) -> dict[str, np.ndarray]:
    """Box shape and landmark layout in the candidate's own frame (its best view's rotation undone)."""
    b = dets.xyxy.astype(np.float64)
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)
    lm = dets.landmarks.astype(np.float64) if dets.landmarks is not None else np.zeros((len(b), 5, 2))
    # landmarks relative to the box, in [0, 1]; a lying face's are turned upright so one model reads all
    u = (lm[:, :, 0] - b[:, None, 0]) / w[:, None]
    v = (lm[:, :, 1] - b[:, None, 1]) / h[:, None]
    for k in (1, 2, 3):
        m = rot == k
        if m.any():
            uu, vv = u[m], v[m]
            # the view saw the image turned by k quarter turns counter-clockwise; turn the points the same way
            u[m], v[m] = {1: (vv, 1 - uu), 2: (1 - uu, 1 - vv), 3: (1 - vv, uu)}[k]
    bw, bh = np.where(rot % 2 == 1, h, w), np.where(rot % 2 == 1, w, h)
    eye_mid = (u[:, 0] + u[:, 1]) / 2, (v[:, 0] + v[:, 1]) / 2
    mouth_mid = (u[:, 3] + u[:, 4]) / 2, (v[:, 3] + v[:, 4]) / 2
    eye_dx, eye_dy = u[:, 1] - u[:, 0], v[:, 1] - v[:, 0]
    eye_dist = np.hypot(eye_dx * bw, eye_dy * bh) / bw
    inside = ((u > -0.1) & (u < 1.1) & (v > -0.1) & (v < 1.1)).mean(axis=1)
    return {
        "log_side": np.log2(np.minimum(w, h)),
        "aspect": bh / bw,
        "eye_dist": eye_dist,
        "eye_tilt": np.abs(np.arctan2(eye_dy * bh, eye_dx * bw + 1e-9)),
        "eye_y": eye_mid[1],
        "mouth_y": mouth_mid[1],
        "eye_mouth": mouth_mid[1] - eye_mid[1],
        "nose_x": (u[:, 2] - eye_mid[0]) / np.maximum(np.abs(eye_dx), 0.05),
        "nose_y": (v[:, 2] - eye_mid[1]) / np.maximum(mouth_mid[1] - eye_mid[1], 0.05),
        "lm_inside": inside,
    }


def context_features(dets: Detections, confident: float = 0.7) -> dict[str, np.ndarray]:
    """Where a candidate sits among the image's other candidates: a weak box overlapping or inside a stronger one
    is a part or a duplicate of it (a hand, an ear, half a face); a box far smaller or larger than the image's
    confident faces is more often texture."""
    b = dets.xyxy.astype(np.float64)
    n = len(b)
    s = dets.scores.astype(np.float64)
    side = np.maximum(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 1.0)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1.0)
    overlap, inside = np.zeros(n), np.zeros(n)
    if n > 1:
        iou = iou_matrix(b, b)
        ix = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
        ioa = ix * iy / area[:, None]  # share of row i inside column j
        stronger = s[None, :] > s[:, None]
        overlap = np.where(stronger, iou, 0).max(axis=1)
        inside = np.where(stronger, ioa, 0).max(axis=1)
    conf = s >= confident
    ref = np.median(side[conf]) if conf.any() else 0.0
    return {
        "ctx_overlap": overlap,
        "ctx_inside": inside,
        "ctx_rel_size": np.log2(side / ref) if ref else np.zeros(n),
        "ctx_n_conf": np.full(n, np.log1p(conf.sum()), np.float64),
    }


def _crop_transform(box: np.ndarray, rot: int, size: int, context: float) -> np.ndarray:
    """2x3 affine from image pixels to a size x size crop around box, turned by rot quarter turns (like np.rot90)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(context * max(box[2] - box[0], box[3] - box[1]), 8.0)
    s = size / side
    a = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy], [0, 0, 1]])
    turn = {0: np.eye(3), 1: np.array([[0, 1, 0], [-1, 0, size], [0, 0, 1.0]]),
            2: np.array([[-1, 0, size], [0, -1, size], [0, 0, 1.0]]),
            3: np.array([[0, -1, size], [1, 0, 0], [0, 0, 1.0]])}[rot % 4]
    return (turn @ a)[:2]


def second_look(frame: np.ndarray, dets: Detections, rot: np.ndarray, nets: Mapping[str, object], size: int,
                context: float,
                threshold: float = 0.05, batch: int = 16) -> dict[str, np.ndarray]:
    """Each net's best score on an upscaled crop around each candidate, on a box agreeing with it (IoU >= 0.3),
    and the IoU of that box: a face seen again closer is still a face; a texture often is not."""
    n = len(dets)
    out: dict[str, np.ndarray] = {}
    for name in nets:
        out[f"look_{name}"] = np.zeros(n, np.float32)
        out[f"look_iou_{name}"] = np.zeros(n, np.float32)
    if not n:
        return out
    crops, expected = [], []
    for i in range(n):
        m = _crop_transform(dets.xyxy[i].astype(np.float64), int(rot[i]), size, context)
        crops.append(cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        corners = np.array([[dets.xyxy[i, 0], dets.xyxy[i, 1], 1], [dets.xyxy[i, 2], dets.xyxy[i, 3], 1]]) @ m.T
        expected.append(np.r_[corners.min(axis=0), corners.max(axis=0)])
    expected_b = np.asarray(expected, np.float64)
    for name, net in nets.items():
        sc, ious = out[f"look_{name}"], out[f"look_iou_{name}"]
        for j in range(0, n, batch):
            res = net.forward(np.stack(crops[j : j + batch]), threshold)
            for k, (b, s, _lm) in enumerate(res):
                i = j + k
                if not len(s):
                    continue
                iou = iou_matrix(expected_b[i : i + 1], b.astype(np.float64))[0]
                ok = iou >= 0.3
                if ok.any():
                    best = int(np.argmax(np.where(ok, s, -1)))
                    sc[i], ious[i] = s[best], iou[best]
    return out


def feature_columns(frame: np.ndarray, dets: Detections, evidence: Mapping[str, np.ndarray], rot: np.ndarray,
                    views: Sequence[str], crop_nets: Mapping[str, object], crop: int,
                    context: float) -> dict[str, np.ndarray]:
    """Every feature by name (the training script caches these; a model reads the columns it was trained on)."""
    n = len(dets)
    cols: dict[str, np.ndarray] = {"fused": dets.scores.astype(np.float64)}
    for key in views:
        cols[f"ev_{key}"] = np.asarray(evidence.get(key, np.zeros(n)), np.float64)
    cols["n_views"] = sum((cols[f"ev_{k}"] > 0).astype(np.float64) for k in views) if views else np.zeros(n)
    cols.update(geometry_features(dets, rot))
    cols.update(second_look(frame, dets, rot, crop_nets, crop, context))
    cols["rotated"] = (rot != 0).astype(np.float64)
    return cols


def verify(frame: np.ndarray, dets: Detections, evidence: Mapping[str, np.ndarray], rot: np.ndarray,
           params: VerifierParams, nets: Mapping[str, object], min_fused: float) -> np.ndarray:
    """The cascade's score of every candidate: the model's probability for those fused at >= min_fused; the others
    keep their fused score, capped just under min_fused (they stay candidates, never above a threshold >= it)."""
    scores = np.minimum(dets.scores, np.float32(np.nextafter(np.float32(min_fused), np.float32(0))))
    look = np.flatnonzero(dets.scores >= min_fused)
    if not look.size:
        return scores
    ctx = context_features(dets)  # over all candidates, as in training
    sub = dets[look]
    cols = feature_columns(frame, sub, {k: v[look] for k, v in evidence.items()}, rot[look], params.views,
                           {k: nets[k] for k in params.crop_nets}, params.crop, params.context)
    cols.update({k: v[look] for k, v in ctx.items()})
    x = np.stack([np.asarray(cols[f], np.float64) for f in params.model.features], axis=1)
    scores[look] = params.model.predict(x).astype(np.float32)
    return scores
