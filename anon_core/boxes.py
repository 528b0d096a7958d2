"""Box geometry shared by detectors, tracking, masking and evaluation."""

from __future__ import annotations

import numpy as np


def area(xyxy: np.ndarray) -> np.ndarray:
    wh = np.clip(xyxy[..., 2:4] - xyxy[..., 0:2], 0, None)
    return wh[..., 0] * wh[..., 1]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def intersection_over_first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of each box in a that lies inside each box in b -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    return inter / np.maximum(area(a)[:, None], 1e-12)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    import cv2

    # OpenCV's C++ NMS: the Python loop was the hot spot on crowd images with thousands of candidates.
    xywh = np.asarray(xyxy, dtype=np.float32).copy()
    xywh[:, 2:] -= xywh[:, :2]
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), np.asarray(scores, np.float32).tolist(), 0.0, float(iou_threshold))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


def clip(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    out = np.asarray(xyxy, dtype=np.float32).copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def scale_about_centre(xyxy: np.ndarray, factor: float | np.ndarray) -> np.ndarray:
    """Grow (factor > 1) or shrink boxes about their centres."""
    xyxy = np.asarray(xyxy, dtype=np.float32)
    c = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    half = (xyxy[:, 2:] - xyxy[:, :2]) / 2 * np.asarray(factor, dtype=np.float32).reshape(-1, 1)
    return np.concatenate([c - half, c + half], axis=1)
