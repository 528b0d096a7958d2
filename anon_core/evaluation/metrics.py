"""Dataset-level detection metrics: AP, P/R/F1, FPR, recall by size, threshold sweeps.

Definitions (kept in one place so reports and tests agree):
- Matching: :func:`anon_core.evaluation.matching.match_image` (greedy, score order, ignore regions).
- Precision = TP / (TP + FP); ignored detections count in neither. FPR = FP / (TP + FP), i.e. the share of
  non-ignored detections that are false (a false-discovery rate; there are no true negatives in detection).
- Recall = TP / number of non-ignored GT boxes.
- AP: all-point interpolation (VOC2010+/COCO style): area under the monotone precision envelope of the PR curve.
  Curve points are taken at each distinct score, so tied scores are never split and the result does not
  depend on the input order.
- Object size for the size buckets = min(w, h) of the GT box in pixels (the shorter side decides whether a face
  or plate is still identifiable, and it matches the `min(w, h) < 10` ignore rule of the shared face data).
- Multi-class data is matched class-aware (a detection only matches GT of its own label); the top-level numbers
  pool all classes (micro average) and `map` is the mean of per-class APs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from anon_core.detections import Detections
from anon_core.evaluation.groundtruth import GroundTruthImage
from anon_core.evaluation.matching import greedy_match, on_ignore, similarity

COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SIZE_BUCKETS: tuple[tuple[float, float], ...] = ((0, 10), (10, 24), (24, 64), (64, math.inf))
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _f(x) -> float | None:
    """Float for JSON; NaN (undefined ratio) becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _bucket_name(lo: float, hi: float) -> str:
    if lo <= 0:
        return f"<{hi:g}"
    if math.isinf(hi):
        return f"{lo:g}+"
    return f"{lo:g}-{hi:g}"


@dataclass
class _Pool:
    """Per-detection and per-GT outcomes of many images, for one class and one IoU threshold."""

    scores: list[np.ndarray] = field(default_factory=list)
    tp: list[np.ndarray] = field(default_factory=list)
    fp: list[np.ndarray] = field(default_factory=list)
    gt_score: list[np.ndarray] = field(default_factory=list)
    gt_size: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, ...]:
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return (cat(self.scores, float), cat(self.tp, bool), cat(self.fp, bool),
                cat(self.gt_score, float), cat(self.gt_size, float))

    def extend(self, other: _Pool) -> None:
        for name in ("scores", "tp", "fp", "gt_score", "gt_size"):
            getattr(self, name).extend(getattr(other, name))


def _curve(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, n_gt: int, n_images: int) -> dict[str, np.ndarray]:
    """Operating points at each distinct score (descending): detections with score >= threshold are kept."""
    keep = tp | fp  # ignored detections do not move the curve
    s, t, f = scores[keep], tp[keep], fp[keep]
    order = np.argsort(-s, kind="stable")
    s, t, f = s[order], np.cumsum(t[order]), np.cumsum(f[order])
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    s, t, f = s[last], t[last].astype(float), f[last].astype(float)
    return {
        "threshold": s,
        "tp": t,
        "fp": f,
        "precision": t / np.maximum(t + f, 1),
        "recall": t / n_gt if n_gt else np.full(len(t), np.nan),
        "fpr": f / np.maximum(t + f, 1),
        "fp_per_image": f / max(n_images, 1),
    }


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP: sum of recall steps times the best precision at that recall or beyond."""
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    if len(recall) == 0 or np.isnan(recall).all():
        return 0.0 if len(recall) == 0 else math.nan
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * envelope))


def _at(scores, tp, fp, gt_score, n_gt, n_images, thr: float) -> dict:
    sel = scores >= thr
    ntp, nfp = int((tp & sel).sum()), int((fp & sel).sum())
    found = int((gt_score >= thr).sum())  # equals ntp: each TP finds exactly one GT
    p, r = _div(ntp, ntp + nfp), _div(found, n_gt)
    f1 = _div(2 * p * r, p + r) if not (math.isnan(p) or math.isnan(r)) else math.nan
    return {
        "threshold": float(thr),
        "tp": ntp,
        "fp": nfp,
        "fn": int(n_gt - found),
        "precision": _f(p),
        "recall": _f(r),
        "f1": _f(f1),
        "fpr": _f(_div(nfp, ntp + nfp)),
        "fp_per_image": nfp / max(n_images, 1),
    }


def threshold_for_target_fpr(results: dict, target: float) -> dict | None:
    """Lowest score threshold whose FPR <= target, with the recall there; None if no threshold reaches it.

    `results` is the dict from :func:`evaluate` (or one of its `per_class` entries); it needs `pr_curve`.
    """
    curve = results["pr_curve"]
    best = None
    for i, fpr in enumerate(curve["fpr"]):  # thresholds descending: the last hit is the lowest threshold
        if fpr is not None and fpr <= target:
            best = i
    if best is None:
        return None
    return {k: curve[k][best] for k in ("threshold", "precision", "recall", "fpr", "fp_per_image")}


def _summarise(
    pools: dict[float, _Pool],
    n_gt: int,
    n_images: int,
    iou: float,
    score_threshold: float,
    size_buckets: Sequence[tuple[float, float]],
    target_precision: float,
    sweep: Sequence[float],
    target_fprs: Sequence[float],
    include_curve: bool,
    n_ignored: int,
) -> dict:
    scores, tp, fp, gt_score, gt_size = pools[iou].arrays()
    curve = _curve(scores, tp, fp, n_gt, n_images)
    ap = average_precision(curve["precision"], curve["recall"]) if n_gt else math.nan
    aps = []
    for t in COCO_IOUS:
        s2, tp2, fp2, _, _ = pools[t].arrays()
        c2 = _curve(s2, tp2, fp2, n_gt, n_images)
        aps.append(average_precision(c2["precision"], c2["recall"]) if n_gt else math.nan)

    by_size = {}
    found = gt_score >= score_threshold
    for lo, hi in size_buckets:
        m = (gt_size >= lo) & (gt_size < hi)
        by_size[_bucket_name(lo, hi)] = {
            "min_side": [float(lo), None if math.isinf(hi) else float(hi)],
            "n_gt": int(m.sum()),
            "found": int((found & m).sum()),
            "recall": _f(_div((found & m).sum(), m.sum())),
        }

    ok = curve["precision"] >= target_precision
    rap = {"precision_target": target_precision, "recall": 0.0 if n_gt else None, "threshold": None}
    if ok.any() and n_gt:
        i = int(np.flatnonzero(ok)[np.argmax(curve["recall"][ok])])
        rap.update(recall=float(curve["recall"][i]), threshold=float(curve["threshold"][i]),
                   precision=float(curve["precision"][i]))

    json_curve = {k: [_f(v) for v in curve[k]] for k in ("threshold", "precision", "recall", "fpr", "fp_per_image")}
    out = {
        "n_images": n_images,
        "n_gt": n_gt,
        "n_det": int(len(scores)),
        "n_det_ignored": n_ignored,
        "iou": iou,
        "ap": _f(ap),
        "ap_50_95": _f(np.mean(aps)) if n_gt else None,
        "ap_per_iou": {f"{t:.2f}": _f(a) for t, a in zip(COCO_IOUS, aps)},
        "at_threshold": _at(scores, tp, fp, gt_score, n_gt, n_images, score_threshold),
        "recall_by_size": by_size,
        "recall_at_precision": rap,
        "sweep": [_at(scores, tp, fp, gt_score, n_gt, n_images, t) for t in sweep],
        "pr_curve": json_curve,
    }
    out["at_target_fpr"] = {f"{t:g}": threshold_for_target_fpr(out, t) for t in target_fprs}
    if not include_curve:
        del out["pr_curve"]
    return out


def evaluate(
    pairs: Iterable[tuple[GroundTruthImage, Detections | None]],
    iou: float = 0.5,
    score_threshold: float = 0.5,
    classes: Sequence[str] | None = None,
    match_fn: str = "iou",
    size_buckets: Sequence[tuple[float, float]] = SIZE_BUCKETS,
    target_precision: float = 0.95,
    sweep: Sequence[float] = SWEEP_THRESHOLDS,
    target_fprs: Sequence[float] = (0.01, 0.05, 0.1),
    include_curve: bool = True,
) -> dict:
    """Every detection metric over (GroundTruthImage, Detections) pairs, as a JSON-serialisable dict.

    classes: evaluate only these labels. Unlabelled GT (labels None) is one class and is matched against all
    detections whose label is in `classes` (all detections when None). Labelled GT is matched class-aware and
    also reported under `per_class`. Ratios with a zero denominator are None.
    """
    pairs = [(gt, det if det is not None else Detections.empty()) for gt, det in pairs]
    labelled = any(gt.labels is not None for gt, _ in pairs)
    if labelled:
        names = set(classes) if classes is not None else set()
        if classes is None:
            for gt, det in pairs:
                names.update(str(x) for x in (gt.labels if gt.labels is not None else []))
                names.update(str(x) for x in det.labels)
        groups: list[str | None] = sorted(names)
    else:
        groups = [None]
    ious = sorted(set(COCO_IOUS) | {iou})

    per_group: dict[str | None, tuple[dict[float, _Pool], int, int]] = {}
    for g in groups:
        pools = {t: _Pool() for t in ious}
        n_gt = n_ign = 0
        for gt, det in pairs:
            if g is not None:
                gt = gt.for_class(g)
                det = det[det.labels == g]
            elif classes is not None:
                det = det[np.isin(det.labels.astype(str), list(classes))]
            sim, allowed = similarity(det.xyxy, gt.boxes, match_fn)
            hit = on_ignore(det.xyxy, gt.ignore)
            wh = gt.boxes[:, 2:] - gt.boxes[:, :2]
            n_gt += len(gt.boxes)
            for t in ious:
                m = greedy_match(det.scores, sim, allowed, hit, t, match_fn)
                if t == iou:
                    n_ign += int(m.ignored.sum())
                p = pools[t]
                p.scores.append(det.scores)
                p.tp.append(m.tp)
                p.fp.append(m.fp)
                p.gt_score.append(m.gt_score)
                p.gt_size.append(wh.min(axis=1) if len(wh) else np.zeros(0))
        per_group[g] = (pools, n_gt, n_ign)

    kw = dict(iou=iou, score_threshold=score_threshold, size_buckets=size_buckets, target_precision=target_precision,
              sweep=sweep, target_fprs=target_fprs, include_curve=include_curve)
    n_images = len(pairs)
    total = {t: _Pool() for t in ious}
    n_gt_all = n_ign_all = 0
    for pools, n_gt, n_ign in per_group.values():
        for t in ious:
            total[t].extend(pools[t])
        n_gt_all += n_gt
        n_ign_all += n_ign
    out = _summarise(total, n_gt_all, n_images, n_ignored=n_ign_all, **kw)
    out["match_fn"] = match_fn
    if labelled:
        out["per_class"] = {
            g: _summarise(pools, n_gt, n_images, n_ignored=n_ign, **kw) for g, (pools, n_gt, n_ign) in per_group.items()
        }
        class_aps = [v["ap"] for v in out["per_class"].values() if v["ap"] is not None]
        out["map"] = float(np.mean(class_aps)) if class_aps else None
    return out
