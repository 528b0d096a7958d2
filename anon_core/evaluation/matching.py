"""Greedy detection-to-ground-truth matching for one image, with ignore regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anon_core.boxes import intersection_over_first, iou_matrix

MATCH_FNS = ("iou", "centre")


@dataclass
class MatchResult:
    """Outcome for one image. Detection arrays are in the caller's order, not score order.

    tp / fp / ignored: (N,) bool, exactly one is true per detection.
    matched_gt: (N,) index of the GT box a TP matched, -1 otherwise.
    gt_matched: (G,) bool, GT boxes found by some detection.
    gt_score: (G,) score of the detection that matched each GT box, -inf if none; recall at a score threshold s
        is mean(gt_score >= s) because greedy matching in score order never changes earlier decisions.
    """

    tp: np.ndarray
    fp: np.ndarray
    ignored: np.ndarray
    matched_gt: np.ndarray
    gt_matched: np.ndarray
    gt_score: np.ndarray


def _centre_inside(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    c = (det[:, None, :2] + det[:, None, 2:]) / 2
    return ((c >= gt[None, :, :2]) & (c < gt[None, :, 2:])).all(axis=2)


def similarity(det: np.ndarray, gt: np.ndarray, match_fn: str = "iou") -> tuple[np.ndarray, np.ndarray]:
    """(N, G) IoU and a boolean "may match" mask before the threshold is applied.

    For "centre" the mask is "detection centre inside the GT box" (loose video GT) and the IoU only ranks
    candidates; for "iou" the mask is all true and the caller thresholds the IoU.
    """
    if match_fn not in MATCH_FNS:
        raise ValueError(f"match_fn must be one of {MATCH_FNS}, got {match_fn!r}")
    iou = iou_matrix(det, gt)
    ok = _centre_inside(np.asarray(det, float).reshape(-1, 4), np.asarray(gt, float).reshape(-1, 4))
    return iou, (ok if match_fn == "centre" else np.ones_like(ok))


def on_ignore(
    det: np.ndarray, ignore: np.ndarray, iou_threshold: float = 0.5, ioa_threshold: float = 0.5
) -> np.ndarray:
    """(N,) bool: detection matches an ignore region (IoU >= 0.5, or >= 50 % of the detection inside it)."""
    det = np.asarray(det, float).reshape(-1, 4)
    ignore = np.asarray(ignore, float).reshape(-1, 4)
    if len(det) == 0 or len(ignore) == 0:
        return np.zeros(len(det), bool)
    hit = (iou_matrix(det, ignore) >= iou_threshold) | (intersection_over_first(det, ignore) >= ioa_threshold)
    return hit.any(axis=1)


def greedy_match(
    scores: np.ndarray,
    iou: np.ndarray,
    allowed: np.ndarray,
    ignore_hit: np.ndarray,
    iou_threshold: float,
    match_fn: str = "iou",
) -> MatchResult:
    """Core matcher on precomputed matrices, so several IoU thresholds can reuse one IoU matrix."""
    n, g = iou.shape
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    cand = allowed if match_fn == "centre" else allowed & (iou >= iou_threshold)
    tp = np.zeros(n, bool)
    fp = np.zeros(n, bool)
    ign = np.zeros(n, bool)
    matched_gt = np.full(n, -1, np.int64)
    gt_matched = np.zeros(g, bool)
    gt_score = np.full(g, -np.inf)
    for d in order:
        row = np.where(cand[d] & ~gt_matched, iou[d], -1.0)
        j = int(np.argmax(row)) if g else -1
        if g and row[j] >= 0:
            tp[d] = True
            matched_gt[d] = j
            gt_matched[j] = True
            gt_score[j] = scores[d]
        elif ignore_hit[d]:
            ign[d] = True
        else:
            fp[d] = True
    return MatchResult(tp, fp, ign, matched_gt, gt_matched, gt_score)


def match_image(
    gt_boxes: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    ignore: np.ndarray | None = None,
    iou_threshold: float = 0.5,
    match_fn: str = "iou",
    ignore_iou: float = 0.5,
    ignore_ioa: float = 0.5,
) -> MatchResult:
    """Match one image's detections to its GT boxes.

    Detections are taken in descending score order; each takes the still-unmatched GT box with the highest IoU
    among those with IoU >= iou_threshold (match_fn="iou") or whose box contains the detection centre
    (match_fn="centre"). A detection left unmatched that lies on an ignore region is `ignored`, else it is `fp`.
    Duplicates on an already-found GT box are therefore FPs unless they sit on an ignore region.
    """
    gt = np.asarray(gt_boxes, float).reshape(-1, 4)
    det = np.asarray(det_boxes, float).reshape(-1, 4)
    scores = np.asarray(det_scores, float).reshape(-1)
    iou, allowed = similarity(det, gt, match_fn)
    hit = on_ignore(det, np.zeros((0, 4)) if ignore is None else ignore, ignore_iou, ignore_ioa)
    return greedy_match(scores, iou, allowed, hit, iou_threshold, match_fn)
