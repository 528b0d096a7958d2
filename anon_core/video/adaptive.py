"""Adaptive detection for the frame engine: where the full detector runs and where less work is enough.

Faces move smoothly between frames and new ones appear only at a few places and moments, so the engine runs
the full detector (every configured detector, every view) on *keyframes* and, on the analysed frames between
them, the same networks on crops around the live tracks only (`video.roi_classes`):

- keyframes: the first frame, at least every `video.keyframe_s`, at scene cuts (a large change of a small grey
  thumbnail against the previous analysed frame), when the crops would cover more than `roi_max_area` of the
  frame (the full frame is then cheaper), and the last frame of a sequence with look-ahead (so a face entering
  near the end is found and the lead window masks it backwards);
- between keyframes: crops of `roi_context` x the predicted box (Kalman prediction of every live track of the
  ROI classes, tentative weak tracks included), merged where they overlap; a detection that touches a crop's
  inner edge is only partly seen and dropped (the crops are large enough that a tracked face is whole).
  Detectors of other classes (plates, persons, text) run on keyframes only; their tracks are interpolated
  between keyframes by the scheduler, which needs `keyframe_s <= max_gap_s`.

Static shots (surveillance): a periodic keyframe is deferred, up to `static_max_s`, while nothing outside the
crops changed since the last keyframe (largest change of a blurred 160-px grey thumbnail below `static_diff`)
and every tracked face was found again on the previous analysed frame: the full detector would look at the same
pixels there. A track that is lost, motion anywhere else, or the time limit bring the keyframe back.

Partial keyframes (`video.partial_keyframes`, faces-only policies): a due keyframe that cannot be deferred looks
only at the box around what changed since the detector last looked there (cells of the same thumbnail changing by
`static_diff` or more, grown by `partial_margin` of the frame's larger side), with the full set of views, plus
the track crops, when that costs at most `roi_max_area` of the frame and every track was found again. A face
can only become detectable where pixels changed: where none did the detector would see what it saw before. The
reference picture is updated inside the searched box only, so slow changes elsewhere add up until they are
looked at, and a full keyframe still comes at least every `static_max_s`. Plates, persons and text are not
searched this way (a parked car's plate lies in unchanged pixels, but its track needs the whole vehicle to be
found again), so any policy with them gets full keyframes.

A face that appears between two keyframes is found at the next one at the latest; the scheduler's lead window
(`lead_s >= keyframe_s` by default) masks the frames before that, extrapolated backwards along the track.
Every one of these shortcuts is measured by the frame-level leak rate (benchmarks/video_leak.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from anon_core.boxes import nms
from anon_core.detections import Detections
from anon_core.detectors.base import SharedWork

THUMB_W = 64  # thumbnail width for the scene-cut test: cheap, and blind to noise and small motion


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A small grey float32 picture in [0, 1] for frame-difference tests."""
    h, w = rgb.shape[:2]
    tw = min(THUMB_W, w)
    th = max(1, round(h * tw / w))
    grey = cv2.cvtColor(cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    return grey.astype(np.float32) / 255.0


def motion_thumbnail(rgb: np.ndarray, width: int = 160) -> np.ndarray:
    """A blurred grey float32 picture in [0, 1], fine enough to see a person enter a surveillance shot."""
    h, w = rgb.shape[:2]
    tw = min(width, w)
    th = max(1, round(h * tw / w))
    grey = cv2.cvtColor(cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(grey.astype(np.float32) / 255.0, (3, 3), 0)


def changed_outside(a: np.ndarray, b: np.ndarray, rois: Sequence[Roi], frame_w: int, frame_h: int) -> float:
    """Largest thumbnail change between a and b outside the crops (what the tracks already watch)."""
    d = np.abs(a - b)
    sx, sy = d.shape[1] / frame_w, d.shape[0] / frame_h
    for r in rois:
        d[int(r.y0 * sy):int(np.ceil(r.y1 * sy)), int(r.x0 * sx):int(np.ceil(r.x1 * sx))] = 0
    return float(d.max()) if d.size else 0.0


def changed_region(a: np.ndarray, b: np.ndarray, diff: float, frame_w: int, frame_h: int, margin: float
                   ) -> Roi | None:
    """The box (frame pixels, grown by `margin` on each side) around every thumbnail cell that changed by at
    least `diff` between a and b; None when nothing did."""
    ys, xs = np.nonzero(np.abs(a - b) >= diff)
    if not len(xs):
        return None
    sx, sy = frame_w / a.shape[1], frame_h / a.shape[0]
    x0, x1 = max(0, int(xs.min() * sx - margin)), min(frame_w, int(np.ceil((xs.max() + 1) * sx + margin)))
    y0, y1 = max(0, int(ys.min() * sy - margin)), min(frame_h, int(np.ceil((ys.max() + 1) * sy + margin)))
    ax0, ax1 = _aligned(x0, x1, frame_w, 32)
    ay0, ay1 = _aligned(y0, y1, frame_h, 32)
    return Roi(ax0, ay0, ax1, ay1)


def refreshed_reference(ref: np.ndarray, current: np.ndarray, r: Roi, frame_w: int, frame_h: int) -> np.ndarray:
    """The reference thumbnail with the current one inside a searched box (cells wholly inside it)."""
    out = ref.copy()
    sx, sy = current.shape[1] / frame_w, current.shape[0] / frame_h
    x0, x1 = int(np.ceil(r.x0 * sx)), int(np.floor(r.x1 * sx))
    y0, y1 = int(np.ceil(r.y0 * sy)), int(np.floor(r.y1 * sy))
    out[y0:y1, x0:x1] = current[y0:y1, x0:x1]
    return out


def scene_change(a: np.ndarray | None, b: np.ndarray) -> float:
    """Mean absolute thumbnail difference (0: same picture, ~0.3+: a cut)."""
    if a is None or a.shape != b.shape:
        return 1.0
    return float(np.abs(a - b).mean())


@dataclass(frozen=True)
class Roi:
    """A crop (x0, y0, x1, y1) of the frame and the scale it is analysed at (<= 1: big faces are searched at
    about `face_px`, where the networks still find them surely, instead of at full size)."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float = 1.0

    @property
    def cost(self) -> float:
        """Pixels the detectors see."""
        return (self.x1 - self.x0) * (self.y1 - self.y0) * self.scale**2


def plan_rois(boxes: np.ndarray, width: int, height: int, context: float, face_px: float = 0.0,
              min_side: int = 48, align: int = 32) -> list[Roi]:
    """Crops around the boxes: `context` x the box's larger side (at least `min_side`), merged while any two
    of similar scale overlap, sides rounded up to `align` pixels (fewer distinct network input shapes); a crop
    whose box is larger than `face_px` (0: off) is analysed downscaled so that the box is about `face_px`."""
    rects: list[list[float]] = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        big = max(x1 - x0, y1 - y0)
        side = max(float(min_side), context * big)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
        if r[2] <= 0 or r[3] <= 0 or r[0] >= width or r[1] >= height:
            continue  # predicted out of the picture
        scale = min(1.0, face_px / big) if face_px > 0 and big > 0 else 1.0
        rects.append([max(0.0, r[0]), max(0.0, r[1]), min(float(width), r[2]), min(float(height), r[3]), scale])
    merged = True
    while merged and len(rects) > 1:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                # crops of very different scales stay apart (overlapping: duplicates are suppressed after
                # detection); merged, the big face's crop would be searched at the small face's scale
                if max(a[4], b[4]) > 1.5 * min(a[4], b[4]):
                    continue
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    # the finer scale of the two: the smaller face decides
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), max(a[4], b[4])]
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    out = []
    for x0, y0, x1, y1, scale in rects:
        ax0, ax1 = _aligned(x0, x1, width, align)
        ay0, ay1 = _aligned(y0, y1, height, align)
        out.append(Roi(ax0, ay0, ax1, ay1, scale))
    return out


def _aligned(a: float, b: float, limit: int, align: int) -> tuple[int, int]:
    """[a, b) grown to a multiple of `align` (as far as the frame allows), shifted back inside [0, limit)."""
    lo, hi = int(np.floor(a)), int(np.ceil(b))
    side = min(limit, -(-(hi - lo) // align) * align)
    lo = max(0, min(lo - (side - (hi - lo)) // 2, limit - side))
    return lo, lo + side


def roi_cost(rois: Sequence[Roi]) -> float:
    return float(sum(r.cost for r in rois))


def _crop(frame: np.ndarray, r: Roi) -> np.ndarray:
    crop = frame[r.y0:r.y1, r.x0:r.x1]
    if r.scale < 1.0:
        w, h = max(1, round((r.x1 - r.x0) * r.scale)), max(1, round((r.y1 - r.y0) * r.scale))
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def _shifted(d: Detections, r: Roi, crop_shape: tuple[int, ...], width: int, height: int, edge: float = 2.0
             ) -> Detections:
    """A crop's detections in frame coordinates, without those cut by one of its inner edges."""
    ch, cw = crop_shape[:2]
    b = d.xyxy
    cut = np.zeros(len(d), bool)
    if r.x0 > 0:
        cut |= b[:, 0] <= edge
    if r.y0 > 0:
        cut |= b[:, 1] <= edge
    if r.x1 < width:
        cut |= b[:, 2] >= cw - edge
    if r.y1 < height:
        cut |= b[:, 3] >= ch - edge
    d = d[~cut]
    sx, sy = (r.x1 - r.x0) / cw, (r.y1 - r.y0) / ch
    d.xyxy = d.xyxy * np.array([sx, sy, sx, sy], np.float32) + np.array([r.x0, r.y0, r.x0, r.y0], np.float32)
    if d.landmarks is not None:
        d.landmarks = d.landmarks * np.array([sx, sy], np.float32) + np.array([r.x0, r.y0], np.float32)
    if d.masks is not None:  # silhouettes back into the full frame
        full = []
        for m in d.masks:
            f = np.zeros((height, width), bool)
            f[r.y0:r.y1, r.x0:r.x1] = cv2.resize(m.astype(np.uint8), (r.x1 - r.x0, r.y1 - r.y0),
                                                 interpolation=cv2.INTER_NEAREST) > 0
            full.append(f)
        d.masks = full
    return d


def detect_regions(anonymizer: Any, frame: np.ndarray, rects: Sequence[Roi], classes: set[str],
                   min_score: float | None, all_detectors: bool) -> Detections:
    """The detectors of `classes` on the crops of one frame, as one frame's detections (what
    `Anonymizer.detect` returns for a whole frame: `data["confident"]`, the policy's classes, the detection
    filters run on the full frame). Any failure is AnalysisFailed, like a failed whole-frame detection.
    Person-conditioned heads (`heads.*`, off by default) need the person detector on the whole frame: they come
    from keyframes only and are interpolated between them like plates."""
    h, w = frame.shape[:2]
    crops = [_crop(frame, r) for r in rects]
    parts = []
    for key, det in anonymizer.detectors.items():
        if not crops or not set(det.classes) & classes:
            continue
        floor = min_score if all_detectors or det.track_candidates else None
        res = anonymizer.call_detector(key, det, crops, floor, SharedWork(), " on a region")
        thr = float(det.threshold)
        for roi, crop, r in zip(rects, crops, res):
            r = _shifted(r, roi, crop.shape, w, h)
            # the same rule as Anonymizer.detect, on frame-sized boxes (small_faces promotes small candidates)
            r.data["confident"] = (r.scores >= thr) | anonymizer.config.small_faces.promote(r)
            parts.append(r)
    merged = Detections.merge(parts)
    if len(rects) > 1 and len(merged) > 1:  # one face seen by two overlapping crops: keep the better view
        labels = merged.labels.astype(str)
        rows = [np.flatnonzero(labels == c)[nms(merged.xyxy[labels == c], merged.scores[labels == c], 0.5)]
                for c in np.unique(labels)]
        merged = merged[np.sort(np.concatenate(rows))]
    return anonymizer.filter_detections(frame, anonymizer.policy_classes(merged))
