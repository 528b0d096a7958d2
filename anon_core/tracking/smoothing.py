"""Look-ahead mask scheduling for video: decides which boxes to mask in each frame.

A detector misses faces for a few frames (motion blur, profile views, occlusion) and usually
finds them a little after they enter the picture. Masking only raw detections therefore leaks
identities in short flashes. The scheduler holds the last L frames back so that, by the time a
frame is emitted, it knows the near future of every track:

- gaps inside a track are filled by linear interpolation between the detections around them;
- masks start `lead` frames before a track's first detection and end `trail` frames after its
  last one (constant-velocity extrapolation from the Kalman state);
- boxes grow where the evidence is weaker (low scores, filled frames);
- every detection at or above the mask threshold is masked in its own frame, tracked or not.

Memory is bounded by the window (L + 1 frames) and one anchor per recently seen track.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from anon_core.boxes import area, clip, scale_about_centre
from anon_core.detections import Detections
from anon_core.tracking.bytetrack import Tracker

# Constant velocity is a guess over more than a few frames; cap the extrapolated shift at this
# many box sizes so a mask drifts at most one face-width away from the last real evidence.
_MAX_SHIFT_BOXES = 1.0


@dataclass
class _Frame:
    index: int
    dets: Detections  # rows to mask (raw, unscaled boxes) with track_ids
    states: np.ndarray  # (N, 8) Kalman mean right after this frame's update; NaN if untracked
    row_of: dict[int, int]  # track id -> row in dets


@dataclass
class _Anchor:
    """Last detection of a track in a frame already emitted: start point for gaps and trails."""

    frame: int
    box: np.ndarray
    score: float
    label: str
    state: np.ndarray


def _shift(box: np.ndarray, state: np.ndarray, frames: int) -> np.ndarray:
    """Move a box by the state's centre velocity over `frames` (negative: backwards), capped.

    Width/height velocities are ignored on purpose: a shrinking prediction is the one error a
    mask cannot afford, and growth is handled by the confidence scale instead.
    """
    v = np.nan_to_num(np.asarray(state[4:6], dtype=np.float64))
    wh = box[2:] - box[:2]
    d = np.clip(v * frames, -_MAX_SHIFT_BOXES * wh, _MAX_SHIFT_BOXES * wh)
    return np.concatenate([box[:2] + d, box[2:] + d])


class MaskScheduler:
    """Turns raw per-frame detections into final per-frame mask boxes, `lookahead_frames` late.

    lookahead_frames: L, frames held back before a frame is final (latency and window size).
    lead_frames: masks start this many frames before a track's first detection (<= L).
    trail_frames: masks continue this many frames after a track's last detection.
    max_gap_frames: longest run of missed frames inside a track that is interpolated; longer gaps
        get trail/lead fill from each side instead. Effective value is at most L, since the
        detection that closes the gap must be inside the window.
    mask_thresh: raw detections at or above this score are always masked in their own frame;
        lower ones are masked only when the tracker attaches them to a track.
    grow_low_score: box scale for a detection at the tracker's low threshold (1.0 at or above
        its high threshold, linear in between).
    grow_interpolated: box scale for boxes interpolated inside a gap.
    grow_predicted: box scale for extrapolated boxes (before the first / after the last detection).
    frame_size: (width, height) to clip output boxes to; None leaves them unclipped.
    tracker: the Tracker to use; by default one whose max_age covers max_gap_frames.
    weak_min_hits: for the default tracker: low-score detections seen on this many consecutive analysed
        frames start a masked track (0: off; see Tracker). The lead window masks the frames before confirmation.
    """

    def __init__(
        self,
        lookahead_frames: int = 15,
        lead_frames: int = 10,
        trail_frames: int = 15,
        max_gap_frames: int = 15,
        mask_thresh: float = 0.5,
        grow_low_score: float = 1.15,
        grow_interpolated: float = 1.2,
        grow_predicted: float = 1.3,
        frame_size: tuple[int, int] | None = None,
        tracker: Tracker | None = None,
        weak_min_hits: int = 0,
    ) -> None:
        if min(lookahead_frames, lead_frames, trail_frames, max_gap_frames) < 0:
            raise ValueError("frame counts must be >= 0")
        if lead_frames > lookahead_frames:
            raise ValueError(f"lead_frames ({lead_frames}) cannot exceed lookahead_frames ({lookahead_frames})")
        self.lookahead = int(lookahead_frames)
        self.lead = int(lead_frames)
        self.trail = int(trail_frames)
        self.max_gap = min(int(max_gap_frames), self.lookahead)
        self.mask_thresh = float(mask_thresh)
        self.grow_low_score = float(grow_low_score)
        self.grow_interpolated = float(grow_interpolated)
        self.grow_predicted = float(grow_predicted)
        self.frame_size = frame_size
        self.tracker = tracker or Tracker(max_age_frames=max(30, self.max_gap + 1), weak_min_hits=weak_min_hits)
        self._buffer: deque[_Frame] = deque()
        self._anchors: dict[int, _Anchor] = {}
        self._next_frame: int | None = None
        self._stats = {
            "frames": 0,
            "frames_masked": 0,
            "detections": 0,
            "filled_boxes": 0,
            "interpolated_boxes": 0,
            "predicted_boxes": 0,
            "longest_gap_filled": 0,
        }

    @classmethod
    def from_seconds(
        cls,
        fps: float,
        lookahead_s: float = 0.5,
        lead_s: float = 0.3,
        trail_s: float = 0.5,
        max_gap_s: float = 0.5,
        **kwargs,
    ) -> MaskScheduler:
        """Same as the constructor with durations in seconds (rounded to whole frames)."""

        def frames(seconds: float) -> int:
            return round(seconds * fps)

        return cls(
            lookahead_frames=frames(lookahead_s),
            lead_frames=min(frames(lead_s), frames(lookahead_s)),
            trail_frames=frames(trail_s),
            max_gap_frames=frames(max_gap_s),
            **kwargs,
        )

    # ------------------------------------------------------------------ streaming API

    def push(self, frame_index: int, dets: Detections) -> list[tuple[int, Detections]]:
        """Add frame_index's raw detections; returns the frames that became final, in order.

        Skipped frame indices are emitted exactly once too, with only filled boxes: they are frames the
        detector did not look at (it runs on every n-th frame), so the tracker does not count them as misses.
        """
        frame_index = int(frame_index)
        if self._next_frame is None:
            self._next_frame = frame_index
        if frame_index < self._next_frame:
            raise ValueError(f"frame {frame_index} pushed after frame {self._next_frame - 1}")
        out: list[tuple[int, Detections]] = []
        while self._next_frame < frame_index:
            out += self._ingest(self._next_frame, None)
        out += self._ingest(frame_index, dets)
        return out

    def flush(self) -> list[tuple[int, Detections]]:
        """End of stream: emit every frame still held back."""
        out = []
        while self._buffer:
            out.append(self._emit())
        return out

    def stats(self) -> dict:
        """Counts for the audit record (emitted frames only, plus tracks confirmed so far)."""
        return {"tracks": self.tracker.tracks_confirmed, **self._stats}

    @property
    def buffered_frames(self) -> int:
        return len(self._buffer)

    @property
    def anchored_tracks(self) -> int:
        return len(self._anchors)

    # ------------------------------------------------------------------ internals

    def _ingest(self, i: int, dets: Detections | None) -> list[tuple[int, Detections]]:
        if dets is None:  # not analysed: nothing to track, the window fills it from its neighbours
            tracked = Detections.empty()
            tracked.track_ids = np.zeros(0, np.int64)
        else:
            tracked = self.tracker.update(dets, i)
        # The detector may say per detection whether it passes its own class threshold.
        confident = tracked.data.get("confident")
        if not isinstance(confident, np.ndarray) or len(confident) != len(tracked):
            confident = tracked.scores >= self.mask_thresh
        keep = confident | (tracked.track_ids >= 0)
        kept = tracked[keep]
        states = self.tracker.states(kept.track_ids)
        row_of = {int(t): r for r, t in enumerate(kept.track_ids) if t >= 0}
        self._buffer.append(_Frame(i, kept, states, row_of))
        self._next_frame = i + 1
        out = []
        while self._buffer and self._buffer[0].index <= i - self.lookahead:
            out.append(self._emit())
        return out

    def _score_scale(self, scores: np.ndarray) -> np.ndarray:
        hi, lo = self.tracker.high_thresh, self.tracker.low_thresh
        if hi <= lo:
            weak = (scores < hi).astype(np.float64)
        else:
            weak = np.clip((hi - scores) / (hi - lo), 0.0, 1.0)
        return 1.0 + (self.grow_low_score - 1.0) * weak

    def _emit(self) -> tuple[int, Detections]:
        entry = self._buffer.popleft()
        j = entry.index

        # First detection of each track in the window ahead, and its most recent state there
        # (the best velocity estimate for extrapolating backwards).
        ahead: dict[int, tuple[_Frame, int]] = {}
        latest_state: dict[int, np.ndarray] = {}
        for e in self._buffer:
            for tid, r in e.row_of.items():
                ahead.setdefault(tid, (e, r))
                latest_state[tid] = e.states[r]

        boxes, scores, labels, tids, scales, interp = [], [], [], [], [], []
        for tid in sorted((self._anchors.keys() | ahead.keys()) - entry.row_of.keys()):
            prev = self._anchors.get(tid)
            nxt = ahead.get(tid)
            if prev is not None and nxt is not None and nxt[0].index - prev.frame - 1 <= self.max_gap:
                e, r = nxt
                t = (j - prev.frame) / (e.index - prev.frame)
                boxes.append((1 - t) * prev.box + t * e.dets.xyxy[r].astype(np.float64))
                scores.append((1 - t) * prev.score + t * float(e.dets.scores[r]))
                labels.append(prev.label)
                scales.append(self.grow_interpolated)
                interp.append(True)
                gap = e.index - prev.frame - 1
                self._stats["longest_gap_filled"] = max(self._stats["longest_gap_filled"], gap)
            else:
                since = j - prev.frame if prev is not None and j - prev.frame <= self.trail else None
                until = nxt[0].index - j if nxt is not None and nxt[0].index - j <= self.lead else None
                if since is None and until is None:
                    continue
                if until is None or (since is not None and since <= until):
                    boxes.append(_shift(prev.box, prev.state, since))
                    scores.append(prev.score)
                    labels.append(prev.label)
                else:
                    e, r = nxt
                    boxes.append(_shift(e.dets.xyxy[r].astype(np.float64), latest_state[tid], -until))
                    scores.append(float(e.dets.scores[r]))
                    labels.append(str(e.dets.labels[r]))
                scales.append(self.grow_predicted)
                interp.append(False)
            tids.append(tid)

        for tid, r in entry.row_of.items():
            self._anchors[tid] = _Anchor(
                j,
                entry.dets.xyxy[r].astype(np.float64),
                float(entry.dets.scores[r]),
                str(entry.dets.labels[r]),
                entry.states[r],
            )
        # An anchor serves later frames only while they are within trail or max_gap of it.
        reach = max(self.trail, self.max_gap)
        for tid in [t for t, a in self._anchors.items() if j + 1 - a.frame > reach]:
            del self._anchors[tid]

        out = self._assemble(entry.dets, boxes, scores, labels, tids, scales, interp)
        n_filled = int(out.data["filled"].sum())
        n_interp = int(out.data["interpolated"].sum())
        self._stats["frames"] += 1
        self._stats["frames_masked"] += int(len(out) > 0)
        self._stats["detections"] += len(out) - n_filled
        self._stats["filled_boxes"] += n_filled
        self._stats["interpolated_boxes"] += n_interp
        self._stats["predicted_boxes"] += n_filled - n_interp
        return j, out

    def _assemble(
        self,
        raw: Detections,
        boxes: list[np.ndarray],
        scores: list[float],
        labels: list[str],
        tids: list[int],
        scales: list[float],
        interp: list[bool],
    ) -> Detections:
        n_raw, n_fill = len(raw), len(boxes)
        fill_xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        xyxy = np.concatenate([raw.xyxy, fill_xyxy])
        factor = np.concatenate([self._score_scale(raw.scores), np.asarray(scales, dtype=np.float64)])
        xyxy = scale_about_centre(xyxy, factor.astype(np.float32))
        if self.frame_size is not None:
            xyxy = clip(xyxy, int(self.frame_size[0]), int(self.frame_size[1]))
        filled = np.concatenate([np.zeros(n_raw, bool), np.ones(n_fill, bool)])
        # A raw detection is kept even if clipping empties it (it cannot, for in-frame boxes);
        # a filled box extrapolated entirely out of the picture is dropped.
        keep = ~filled | (area(xyxy) > 0)

        landmarks = None
        if raw.landmarks is not None and n_raw:
            pad = np.full((n_fill, *raw.landmarks.shape[1:]), np.nan, np.float32)
            landmarks = np.concatenate([raw.landmarks, pad])[keep]
        masks = None
        if raw.masks is not None and n_raw:
            # Filled rows have no silhouette; a box-shaped mask keeps the list aligned.
            shape = raw.masks[0].shape
            masks = list(raw.masks)
            for b in np.round(xyxy[n_raw:]).astype(int):
                m = np.zeros(shape, bool)
                m[max(b[1], 0) : max(b[3], 0), max(b[0], 0) : max(b[2], 0)] = True
                masks.append(m)
            masks = [m for m, k in zip(masks, keep) if k]

        raw_ids = raw.track_ids if raw.track_ids is not None else np.full(n_raw, -1, np.int64)
        return Detections(
            xyxy=xyxy[keep],
            scores=np.concatenate([raw.scores, np.asarray(scores, np.float32)])[keep],
            labels=np.concatenate([raw.labels, np.asarray(labels, dtype=object)])[keep],
            landmarks=landmarks,
            masks=masks,
            track_ids=np.concatenate([raw_ids, np.asarray(tids, np.int64)])[keep],
            data={
                "filled": filled[keep],
                "interpolated": np.concatenate([np.zeros(n_raw, bool), np.asarray(interp, bool)])[keep],
            },
        )
