"""ByteTrack-style multi-object tracker: Kalman prediction + two-stage IoU association.

Stage 1 matches confident detections to every live track; stage 2 gives the leftover tracks a
chance to claim low-score detections. For anonymization, stage 2 is what keeps a face masked
when it turns away or blurs and the detector's score dips for a few frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from anon_core.boxes import iou_matrix
from anon_core.detections import Detections
from anon_core.tracking.kalman import STATE_DIM, BoxKalman

_INVALID = 1e6  # cost of a forbidden pair; Hungarian then prefers any number of valid pairs


@dataclass
class _Track:
    key: int  # internal, never shown
    label: str
    last_frame: int  # frame of the last matched detection
    state_frame: int  # frame the Kalman state refers to
    hits: int = 1
    track_id: int = -1  # public id, given on confirmation so ids stay dense
    weak: bool = False  # started from a low-score detection and never matched a confident one


def associate(
    track_boxes: np.ndarray,
    track_labels: np.ndarray,
    det_boxes: np.ndarray,
    det_labels: np.ndarray,
    min_iou: float,
    per_class: bool = True,
) -> list[tuple[int, int]]:
    """Optimal one-to-one IoU matching; returns (track_row, det_row) pairs with IoU >= min_iou."""
    if len(track_boxes) == 0 or len(det_boxes) == 0:
        return []
    iou = iou_matrix(track_boxes, det_boxes)
    valid = iou >= min_iou
    if per_class:
        valid &= track_labels[:, None] == det_labels[None, :]
    if not valid.any():
        return []
    cost = np.where(valid, 1.0 - iou, _INVALID)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if valid[r, c]]


class Tracker:
    """Assigns stable track ids to per-frame detections.

    high_thresh: detections at or above this score are matched first and may start tracks.
    low_thresh: detections in [low_thresh, high_thresh) can only extend an existing track (stage 2);
        below low_thresh they are ignored by the tracker.
    match_iou: minimum IoU between a track's predicted box and a detection to match.
    max_age_frames: a track not matched for more than this many frames is dropped.
    min_hits: matches needed before a track is confirmed and gets a public id; earlier
        detections keep track id -1 (they are still returned).
    per_class: never associate a detection with a track of another label.
    weak_min_hits: 0 (off, ByteTrack's rule): low-score detections never start a track. N > 0: an unmatched
        low-score detection starts a tentative track, confirmed after N consecutive matches. Evidence
        accumulated over time: a face the detector only half-recognises (from behind, in a picture frame, far
        away) scores low but steadily where it is, while most false positives flicker.
    """

    def __init__(
        self,
        high_thresh: float = 0.5,
        low_thresh: float = 0.1,
        match_iou: float = 0.3,
        max_age_frames: int = 30,
        min_hits: int = 1,
        per_class: bool = True,
        kalman: BoxKalman | None = None,
        weak_min_hits: int = 0,
    ) -> None:
        if not 0.0 <= low_thresh <= high_thresh:
            raise ValueError("need 0 <= low_thresh <= high_thresh")
        if max_age_frames < 0 or min_hits < 1 or weak_min_hits < 0:
            raise ValueError("need max_age_frames >= 0, min_hits >= 1 and weak_min_hits >= 0")
        self.weak_min_hits = int(weak_min_hits)
        self.high_thresh = float(high_thresh)
        self.low_thresh = float(low_thresh)
        self.match_iou = float(match_iou)
        self.max_age_frames = int(max_age_frames)
        self.min_hits = int(min_hits)
        self.per_class = bool(per_class)
        self.kf = kalman or BoxKalman()
        self._tracks: list[_Track] = []
        self._mean = np.zeros((0, STATE_DIM))
        self._cov = np.zeros((0, STATE_DIM, STATE_DIM))
        self._next_key = 0
        self._next_id = 1
        self._last_frame: int | None = None

    @property
    def tracks_confirmed(self) -> int:
        """How many tracks have been given a public id so far."""
        return self._next_id - 1

    @property
    def active_tracks(self) -> int:
        return len(self._tracks)

    def states(self, track_ids: np.ndarray) -> np.ndarray:
        """Kalman means (N, 8) for the given ids; NaN rows for -1 or ids no longer live."""
        row_of = {t.track_id: r for r, t in enumerate(self._tracks) if t.track_id >= 0}
        out = np.full((len(track_ids), STATE_DIM), np.nan)
        for i, tid in enumerate(np.asarray(track_ids).reshape(-1)):
            r = row_of.get(int(tid))
            if r is not None:
                out[i] = self._mean[r]
        return out

    def predicted(self, frame_index: int, labels: set[str] | None = None, max_since: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) the live tracks are expected at in `frame_index` (Kalman prediction, state untouched),
        their labels and the frame each was last matched in; only tracks of `labels` matched within `max_since`
        frames. Tentative tracks are included: the frame engine re-detects around them so a weak track can
        collect its consecutive hits."""
        rows = [r for r, t in enumerate(self._tracks)
                if (labels is None or t.label in labels) and (max_since is None or frame_index - t.last_frame
                                                              <= max_since)]
        if not rows:
            return np.zeros((0, 4)), np.zeros(0, object), np.zeros(0, np.int64)
        idx = np.asarray(rows, np.int64)
        dt = np.array([max(0, frame_index - self._tracks[r].state_frame) for r in rows], np.float64)
        mean, _ = self.kf.predict(self._mean[idx], self._cov[idx], dt)
        return (self.kf.boxes(mean), np.array([self._tracks[r].label for r in rows], dtype=object),
                np.array([self._tracks[r].last_frame for r in rows], np.int64))

    def update(self, dets: Detections, frame_index: int) -> Detections:
        """Match this frame's detections; returns them in input order with track_ids (-1: none)."""
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame_index must increase (got {frame_index} after {self._last_frame})")
        self._last_frame = frame_index

        # Expire before matching so a track gone for longer than max_age cannot be revived.
        self._drop_except([r for r, t in enumerate(self._tracks) if frame_index - t.last_frame <= self.max_age_frames])
        n_tr = len(self._tracks)
        if n_tr:
            dt = np.array([frame_index - t.state_frame for t in self._tracks], dtype=np.float64)
            self._mean, self._cov = self.kf.predict(self._mean, self._cov, dt)
            for t in self._tracks:
                t.state_frame = frame_index
        pred_boxes = self.kf.boxes(self._mean) if n_tr else np.zeros((0, 4))
        track_labels = np.array([t.label for t in self._tracks], dtype=object)

        scores = dets.scores
        high = np.flatnonzero(scores >= self.high_thresh)
        low = np.flatnonzero((scores >= self.low_thresh) & (scores < self.high_thresh))

        matched_det: dict[int, int] = {}  # track row -> det index
        pairs = associate(pred_boxes, track_labels, dets.xyxy[high], dets.labels[high], self.match_iou, self.per_class)
        for r, c in pairs:
            matched_det[r] = int(high[c])
        free = np.array([r for r in range(n_tr) if r not in matched_det], dtype=np.int64)
        if len(free) and len(low):
            pairs = associate(
                pred_boxes[free], track_labels[free], dets.xyxy[low], dets.labels[low], self.match_iou, self.per_class
            )
            for r, c in pairs:
                matched_det[int(free[r])] = int(low[c])

        if matched_det:
            rows = np.array(sorted(matched_det), dtype=np.int64)
            cols = np.array([matched_det[r] for r in rows], dtype=np.int64)
            m, p = self.kf.update(self._mean[rows], self._cov[rows], dets.xyxy[cols])
            self._mean[rows], self._cov[rows] = m, p
            for r, c in zip(rows, cols):
                t = self._tracks[r]
                t.hits += 1
                t.last_frame = frame_index
                t.weak = t.weak and scores[c] < self.high_thresh
                if t.track_id < 0 and t.hits >= (self.weak_min_hits if t.weak else self.min_hits):
                    t.track_id = self._new_id()

        # Unconfirmed tracks die on their first miss (a one-off false positive must not linger);
        # confirmed ones survive misses up to max_age_frames.
        keep = [r for r, t in enumerate(self._tracks) if r in matched_det or t.track_id >= 0]
        self._drop_except(keep)
        row_of_det = {}
        for new_row, old_row in enumerate(keep):
            if old_row in matched_det:
                row_of_det[matched_det[old_row]] = new_row

        used = set(matched_det.values())
        new_dets = [int(i) for i in high if int(i) not in used]
        if self.weak_min_hits:
            new_dets += [int(i) for i in low if int(i) not in used]
        if new_dets:
            m, p = self.kf.initiate(dets.xyxy[new_dets])
            self._mean = np.concatenate([self._mean, m])
            self._cov = np.concatenate([self._cov, p])
            for i in new_dets:
                t = _Track(self._next_key, str(dets.labels[i]), frame_index, frame_index,
                           weak=bool(scores[i] < self.high_thresh))
                self._next_key += 1
                if (self.weak_min_hits if t.weak else self.min_hits) <= 1:
                    t.track_id = self._new_id()
                row_of_det[i] = len(self._tracks)
                self._tracks.append(t)

        ids = np.full(len(dets), -1, dtype=np.int64)
        for i, row in row_of_det.items():
            ids[i] = self._tracks[row].track_id
        out = dets[np.arange(len(dets))]
        out.track_ids = ids
        return out

    def _new_id(self) -> int:
        tid = self._next_id
        self._next_id += 1
        return tid

    def _drop_except(self, rows: list[int]) -> None:
        idx = np.asarray(rows, dtype=np.int64)
        self._tracks = [self._tracks[r] for r in rows]
        self._mean = self._mean[idx]
        self._cov = self._cov[idx]
