"""The frame engine: one sequence of frames in, the same frames masked out, in order.

Every path that masks a sequence of frames runs this one loop: video files (`anon_core/video/anonymize.py`),
the WebSocket stream (`jobs/service/stream.py`) and validation on video (`anon_core/evaluation/harness.py`).
Per pushed batch it

1. detects on every k-th frame (`video.detect_every_k`, times `video.roi_every` with adaptive detection)
   through `Anonymizer.detect_or_mask`, down to the candidate score for detectors whose candidates the
   tracker uses, under the `on_analysis_error` policy (a frame whose analysis failed, and the frames
   interpolated from it, are masked whole). Adaptive detection (`video.keyframe_s`, anon_core/video/
   adaptive.py): the full detector on keyframes, the face networks on crops around the live tracks on the
   analysed frames between them; `verify()` checks the keyframe spacing too;
2. hands the detections to the `MaskScheduler` (ByteTrack with weak tracks, look-ahead, lead/trail, gap
   fill), which releases frames once their masks are final, `lookahead` frames late;
3. masks each released frame (`Anonymizer.mask`, with its mask hooks) and runs the residual check on the
   sampled frames.

`flush()` ends the sequence: the frames after the last analysed one are analysed too (no extrapolating into
the end), everything held back is released, and a frame the scheduler never released is an error, never
output. Memory is bounded by the look-ahead plus one batch, whatever the sequence's length.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from anon_core.detections import Detections
from anon_core.masking.context import MaskContext, mask_whole_frame
from anon_core.media.errors import AnalysisFailed
from anon_core.tracking import MaskScheduler
from anon_core.video.adaptive import (
    Roi,
    changed_outside,
    changed_region,
    detect_regions,
    motion_thumbnail,
    plan_rois,
    refreshed_reference,
    roi_cost,
    scene_change,
    thumbnail,
)
from anon_core.video.settings import VideoSettings


class Pipeline(Protocol):
    """What the engine uses of `anon_core.pipeline.Anonymizer` (declared here so video/ needn't import it)."""

    config: Any
    residual: Any
    detectors: dict[str, Any]  # adaptive detection runs some of them on crops (anon_core/video/adaptive.py)
    detection_filters: list[Any]
    classes: list[str]

    def candidate_classes(self) -> set[str]: ...

    def detect_or_mask(self, frames: Sequence[np.ndarray], min_score: float | None = None, *,
                       all_detectors: bool = False) -> tuple[list[Detections], list[bool]]: ...

    def mask_context(self, recorder: Any = None) -> MaskContext: ...

    def mask(self, frame: np.ndarray, dets: Detections, ctx: MaskContext | None = None, index: int = 0
             ) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class Windows:
    """The scheduler's windows in seconds (see VideoSettings)."""

    lookahead_s: float
    lead_s: float
    trail_s: float
    max_gap_s: float

    @classmethod
    def of(cls, v: VideoSettings) -> Windows:
        return cls(v.lookahead_s, v.lead_s, v.trail_s, v.max_gap_s)


@dataclass
class MaskedFrame:
    """One frame out of the engine.

    rgb: what may be published. source: the frame as it was pushed (validation compares the two).
    raw: the detector's output for this frame (None: not analysed, detect_every_k > 1), down to the
    engine's detection floor. final: what the tracker decided to mask. failed: analysis failed and the
    frame is masked whole.
    """

    index: int
    rgb: np.ndarray
    source: np.ndarray
    meta: Any
    time_s: float | None
    raw: Detections | None
    final: Detections
    failed: bool


@dataclass
class _Held:
    rgb: np.ndarray
    meta: Any
    time_s: float | None
    raw: Detections | None = None


def weak_hits(hits: int, k: int) -> int:
    """Analysed frames a weak track needs: the same stretch of video whatever k is, but never one lone hit."""
    return hits if k == 1 or hits == 0 else max(2, -(-hits // k))


def expected_detected(n: int, k: int) -> int:
    """Frames the detectors must have seen for n frames: every k-th, plus the tail after the last of them."""
    return (n + k - 1) // k + ((n - 1) % k if n else 0)


def _add_ms(timings: dict[str, float], key: str, t0: float) -> None:
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000


class FrameSession:
    """One sequence's tracking state; push batches of frames, then flush. Not thread-safe (one caller).

    fps / frame_size: the sequence's average rate and (width, height). kind: "video" | "stream" | "validate"
    (passed to mask hooks). windows: the scheduler windows (default: the config's video settings).
    score_floor: also return every detector's detections down to this score in `MaskedFrame.raw`
    (validation's PR curves); what is tracked and masked does not change. ctx: the asset's mask state
    (`Anonymizer.mask_context()`: vault recorder, subject tracks; a fresh one by default); the engine sets its
    `kind` and `record` and hands it to every mask, whole-frame mask and residual re-mask. record: the
    asset's audit record. timings: a dict the stage times (ms) are added to.
    """

    def __init__(self, anonymizer: Pipeline, fps: float, frame_size: tuple[int, int], *, kind: str = "video",
                 windows: Windows | None = None, score_floor: float | None = None, ctx: MaskContext | None = None,
                 record: Any = None, timings: dict[str, float] | None = None) -> None:
        self.anonymizer = anonymizer
        self.ctx = ctx if ctx is not None else anonymizer.mask_context()
        self.ctx.kind = kind
        if record is not None:
            self.ctx.record = record
        self.recorder = self.ctx.recorder
        settings = anonymizer.config.video
        self.configured_k = settings.detect_every_k  # what verify() checks against
        self.k = settings.detect_every_k
        self.candidate_score = float(settings.candidate_score)
        self.candidate_classes = anonymizer.candidate_classes()
        self.all_detectors = score_floor is not None
        self.detect_floor = self.candidate_score if score_floor is None else min(float(score_floor),
                                                                                 self.candidate_score)
        self.kind, self.fps = kind, float(fps)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        w = windows or Windows.of(settings)
        # adaptive detection (anon_core/video/adaptive.py): the full detector every `key_every` frames at least.
        # A face that becomes detectable just after a keyframe is found at the next one; the lead window masks
        # it back to where it appeared only if it spans that gap, so the gap is capped by the lead (no look-ahead,
        # as in the default stream: the full detector on every frame).
        lead = min(round(w.lead_s * self.fps), round(w.lookahead_s * self.fps))
        want = max(1, round(settings.keyframe_s * self.fps)) if settings.keyframe_s > 0 else 0
        self.key_every = min(want, lead + 1)
        self.adaptive = self.key_every > self.k
        if self.adaptive and settings.roi_every > 1 and self.key_every > self.k * settings.roi_every:
            # between keyframes the crops are searched on every roi_every-th analysed frame only; the
            # scheduler interpolates the others, as with detect_every_k
            self.k *= int(settings.roi_every)
            self.configured_k = self.k
        self.roi_classes = set(settings.roi_classes)
        self.roi_context, self.roi_max_area = float(settings.roi_context), float(settings.roi_max_area)
        self.roi_face_px = float(settings.roi_face_px)
        self.scene_cut = float(settings.scene_cut)
        self.static_max = round(settings.static_max_s * self.fps) if self.adaptive else 0
        self.static_diff = float(settings.static_diff)
        self.key_mthumb: np.ndarray | None = None
        # partial keyframes (adaptive.py): faces-only detectors, no person-conditioned heads (need the whole frame)
        self.partial = (self.adaptive and settings.partial_keyframes and self.static_max > 0
                        and getattr(anonymizer, "heads", None) is None
                        and all(set(d.classes) <= self.roi_classes for d in anonymizer.detectors.values()))
        self.partial_margin = float(settings.partial_margin)
        self.last_full_key: int | None = None
        # with sparse detection the gap between two detector frames must still be interpolated, and with
        # adaptive detection the gap between two keyframes (classes searched on keyframes only)
        span = max(self.k, self.key_every if self.adaptive else 0)
        self.scheduler = MaskScheduler.from_seconds(
            self.fps, w.lookahead_s, w.lead_s, w.trail_s,
            max(w.max_gap_s, (span + 1) / self.fps),
            frame_size=frame_size, mask_thresh=settings.mask_thresh,
            # the evidence a weak track needs spans the same stretch of video whatever k is (at least 2 hits)
            weak_min_hits=weak_hits(settings.weak_track_hits, self.k),
        )
        self.residual = anonymizer.residual.session(self.fps) if anonymizer.residual else None
        self.timings: dict[str, float] = timings if timings is not None else {}
        self.pending: dict[int, _Held] = {}  # frames waiting for the scheduler's verdict
        self.failed: set[int] = set()  # fail closed: frames whose analysis failed are masked whole
        self.detected: dict[str, int] = {}
        self.masked: dict[str, int] = {}
        self.frames_in = 0
        self.frames_out = 0
        self.frames_detected = 0
        self.max_pending = 0
        self.last_pushed = -1
        self.flushed = False
        # adaptive state: the newest frame waits for the next push when there is look-ahead (the last frame of
        # a sequence is then a keyframe), frames released before a failed push come out with the next call
        self.holdback = self.adaptive and self.scheduler.lookahead > 0
        self.next_index = 0
        self.ready: list[MaskedFrame] = []
        self.last_key: int | None = None
        self.prev_thumb: np.ndarray | None = None
        self.max_key_gap = 0
        self.max_full_gap = 0  # between full keyframes (partial ones in between)
        self.adaptive_stats = {"keyframes": 0, "roi_frames": 0, "scene_cuts": 0, "roi_keyframes": 0,
                               "roi_pixels": 0, "roi_crops": 0, "static_deferred": 0,
                               "partial_keyframes": 0}

    # -- the loop
    def push(self, frames: Sequence[np.ndarray], metas: Sequence[Any] | None = None,
             times_s: Sequence[float | None] | None = None) -> list[MaskedFrame]:
        """Add the next frames (RGB uint8) with optional per-frame payloads and times; returns the frames
        whose masks became final, in order (possibly none, possibly earlier ones)."""
        if self.flushed:
            raise RuntimeError("push after flush: start a new FrameSession")
        metas = list(metas) if metas is not None else [None] * len(frames)
        times = list(times_s) if times_s is not None else [None] * len(frames)
        start = self.frames_in
        for j, rgb in enumerate(frames):
            self.pending[start + j] = _Held(rgb, metas[j], times[j])
        self.frames_in += len(frames)
        if self.adaptive:
            return self._push_adaptive(start)
        todo = [i for i in range(start, self.frames_in) if i % self.k == 0]
        try:
            dets, failed = self._detect(todo)
        except BaseException:
            # The batch never reached the scheduler: forget it, so that a caller that goes on (the stream
            # reports the frame as an error) cannot have these frames emitted later as "skipped" ones.
            for i in range(start, self.frames_in):
                self.pending.pop(i, None)
            self.frames_in = start
            raise
        self.max_pending = max(self.max_pending, len(self.pending))
        for i, bad in zip(todo, failed):
            if bad:  # frames interpolated from this one are unchecked too
                self.failed.update(range(max(0, i - self.k + 1), i + self.k))
        out: list[MaskedFrame] = []
        for i, d in zip(todo, dets):
            t0 = time.perf_counter()
            final = self.scheduler.push(i, d)
            self.last_pushed = i
            _add_ms(self.timings, "track", t0)
            out += self._mask(final)
        return out

    def flush(self) -> list[MaskedFrame]:
        """End of the sequence: every frame still held comes out; the session is finished."""
        if self.flushed:
            return []
        self.flushed = True
        # Frames after the last detector frame (detect_every_k > 1) have no later evidence to interpolate
        # towards: analyse them too rather than extrapolate into the end of the stream.
        tail = [i for i in sorted(self.pending) if i > self.last_pushed]
        if self.adaptive:
            # the held-back frames: every k-th one, and all after the last k-th frame (expected_detected's rule)
            last_kth = (self.frames_in - 1) // self.k * self.k
            tail = [i for i in tail if i % self.k == 0 or i > last_kth]
            out, self.ready = self.ready, []
            for i in tail:  # with look-ahead, the last frame is a keyframe (a face entering at the end)
                out += self._analyse(i, force_key=self.holdback and i == tail[-1])
            t0 = time.perf_counter()
            final = self.scheduler.flush()
            _add_ms(self.timings, "track", t0)
            out += self._mask(final)
            if self.pending:
                raise RuntimeError(f"{len(self.pending)} frames were never scheduled for masking")
            return out
        t0 = time.perf_counter()
        final: list[tuple[int, Detections]] = []
        dets, failed = self._detect(tail)
        for i, d, bad in zip(tail, dets, failed):
            if bad:
                self.failed.add(i)
            final += self.scheduler.push(i, d)
        final += self.scheduler.flush()
        _add_ms(self.timings, "track", t0)
        out = self._mask(final)
        if self.pending:  # fail closed: a frame the scheduler never released would go out unchecked
            raise RuntimeError(f"{len(self.pending)} frames were never scheduled for masking")
        return out

    def verify(self) -> None:
        """After flush: every k-th frame and the tail went through the detectors, every frame came out."""
        n = self.frames_in
        expected = expected_detected(n, self.configured_k)
        if self.frames_detected != expected:
            raise RuntimeError(f"{self.frames_detected} frames analysed, expected {expected}: output not published")
        if self.frames_out != n:
            raise RuntimeError(f"{self.frames_out} of {n} frames came out of the engine")
        if self.adaptive and n:
            # the full detector ran on the first frame and at least every key_every frames after it
            # (later while the picture stood still: static deferral, at most static_max frames)
            allowed = max(self.key_every, self.static_max) + self.k - 1
            if self.adaptive_stats["keyframes"] < 1 or self.max_key_gap > allowed:
                raise RuntimeError(f"keyframes {self.max_key_gap} frames apart (at most {allowed}): "
                                   "output not published")
            allowed_full = max(self.key_every, self.static_max + self.key_every) + self.k - 1
            if self.max_full_gap > allowed_full:
                raise RuntimeError(f"full keyframes {self.max_full_gap} frames apart (at most {allowed_full}): "
                                   "output not published")
            if self.holdback and self.last_key != n - 1:
                raise RuntimeError("the last frame was not a keyframe: output not published")

    def stats(self) -> dict:
        return {"frames": self.frames_in, "frames_out": self.frames_out, "frames_detected": self.frames_detected,
                "detected": dict(self.detected), "masked": dict(self.masked),
                "frames_failed": len(self.failed & set(range(self.frames_in))),
                "max_frames_held": self.max_pending, "tracks": self.scheduler.stats(),
                **({"adaptive": self.adaptive_report()} if self.adaptive else {}),
                "timings_ms": {k: round(v, 2) for k, v in self.timings.items()}}

    def adaptive_report(self) -> dict:
        st = dict(self.adaptive_stats)
        w, h = self.frame_size
        roi = st.pop("roi_pixels")
        # share of the analysed frames' pixels the detectors saw (keyframes: all of them)
        st["pixels_analysed_share"] = round((st["keyframes"] * w * h + roi) / max(1, self.frames_detected * w * h), 4)
        st["key_every"] = self.key_every
        st["max_key_gap"] = self.max_key_gap
        st["max_full_key_gap"] = self.max_full_gap
        return st

    # -- adaptive detection
    def _push_adaptive(self, start: int) -> list[MaskedFrame]:
        limit = self.frames_in - (1 if self.holdback else 0)
        out, self.ready = self.ready, []
        try:
            while self.next_index < limit:
                i = self.next_index
                if i % self.k == 0:
                    out += self._analyse(i)
                self.next_index = i + 1
        except BaseException:
            # What reached the scheduler stays (it comes out with the next call); the rest of this batch is
            # forgotten, so a caller that goes on cannot have these frames emitted later as skipped ones.
            keep = max(self.last_pushed, start - 1)
            for i in range(keep + 1, self.frames_in):
                self.pending.pop(i, None)
            self.frames_in = keep + 1
            self.next_index = self.last_pushed + 1
            self.ready = out
            raise
        self.max_pending = max(self.max_pending, len(self.pending))
        return out

    def _static(self, i: int, mthumb: np.ndarray | None, rects: list[Roi], last: np.ndarray, w: int, h: int
                ) -> bool:
        """Whether a due keyframe may wait: a still picture outside the tracked crops, every track held."""
        if mthumb is None or self.key_mthumb is None or self.last_key is None or i - self.last_key >= self.static_max:
            return False
        if not self._tracks_held(last):
            return False
        if changed_outside(self.key_mthumb, mthumb, rects, w, h) >= self.static_diff:
            return False
        self.adaptive_stats["static_deferred"] += 1
        return True

    def _tracks_held(self, last: np.ndarray) -> bool:
        """Every tracked face was found again on the previous analysed frame (else: look everywhere)."""
        return not len(last) or int(last.min()) >= self.last_pushed

    def _partial_region(self, i: int, mthumb: np.ndarray | None, rects: list[Roi], last: np.ndarray, w: int,
                        h: int) -> Roi | None:
        """The changed box a due keyframe may be limited to (see adaptive.py), or None for a full keyframe."""
        if (not self.partial or mthumb is None or self.key_mthumb is None or self.last_full_key is None
                or i - self.last_full_key >= self.static_max or not self._tracks_held(last)):
            return None
        region = changed_region(self.key_mthumb, mthumb, self.static_diff, w, h, self.partial_margin * max(w, h))
        if region is None or roi_cost(rects) + region.cost > self.roi_max_area * w * h:
            return None
        return region

    def _analyse(self, i: int, force_key: bool = False) -> list[MaskedFrame]:
        """One analysed frame: the full detector (keyframe) or the ROI detectors on crops around the tracks."""
        rgb = self.pending[i].rgb
        t0 = time.perf_counter()
        thumb = thumbnail(rgb)
        cut = self.prev_thumb is not None and scene_change(self.prev_thumb, thumb) > self.scene_cut
        self.prev_thumb = thumb
        h, w = rgb.shape[:2]
        mthumb = motion_thumbnail(rgb) if self.static_max else None
        key = force_key or cut or self.last_key is None
        rects: list[Roi] = []
        partial: Roi | None = None
        if not key:
            boxes, _, last = self.scheduler.tracker.predicted(i, self.roi_classes, max_since=self.scheduler.max_gap)
            rects = plan_rois(boxes, w, h, self.roi_context, self.roi_face_px)
            if i - self.last_key >= self.key_every:  # a periodic keyframe is due
                key = not self._static(i, mthumb, rects, last, w, h)
                if key and (region := self._partial_region(i, mthumb, rects, last, w, h)) is not None:
                    key, partial = False, region
            if not key and partial is None and roi_cost(rects) > self.roi_max_area * w * h:
                key = True  # the crops would cost about as much as the frame
                self.adaptive_stats["roi_keyframes"] += 1
        self.adaptive_stats["scene_cuts"] += int(cut)
        if key:
            dets, failed = self.anonymizer.detect_or_mask([rgb], min_score=self.detect_floor,
                                                          all_detectors=self.all_detectors)
            raw, bad = dets[0], failed[0]
            if self.last_key is not None:
                self.max_key_gap = max(self.max_key_gap, i - self.last_key)
                self.max_full_gap = max(self.max_full_gap, i - self.last_full_key)
            self.last_key = self.last_full_key = i
            self.key_mthumb = mthumb
            self.adaptive_stats["keyframes"] += 1
        else:
            bad = False
            if partial is not None:  # the changed box counts as looked at from here on
                self.max_key_gap = max(self.max_key_gap, i - self.last_key)
                self.last_key = i
                self.key_mthumb = refreshed_reference(self.key_mthumb, mthumb, partial, w, h)
                self.adaptive_stats["partial_keyframes"] += 1
                rects = [*rects, partial]
            try:
                raw = (detect_regions(self.anonymizer, rgb, rects, self.roi_classes, self.detect_floor,
                                      self.all_detectors) if rects else Detections.empty())
            except AnalysisFailed:
                if self.anonymizer.config.on_analysis_error != "mask_frame":
                    raise
                raw, bad = Detections.empty(), True
            self.adaptive_stats["roi_frames"] += 1
            self.adaptive_stats["roi_pixels"] += roi_cost(rects)
            self.adaptive_stats["roi_crops"] += len(rects)
        _add_ms(self.timings, "detect", t0)
        self.frames_detected += 1
        self.pending[i].raw = raw
        d = self._tracked(raw)
        for label, n in d.counts().items():
            self.detected[label] = self.detected.get(label, 0) + n
        if bad:  # frames interpolated from this one are unchecked too
            self.failed.update(range(max(0, i - self.k + 1), i + self.k))
        t0 = time.perf_counter()
        final = self.scheduler.push(i, d)
        self.last_pushed = i
        _add_ms(self.timings, "track", t0)
        return self._mask(final)

    # -- steps
    def _tracked(self, d: Detections) -> Detections:
        """What the tracker sees: confident detections, plus candidates from detectors that track them."""
        if not len(d):
            return d
        conf = d.data.get("confident")
        conf = conf if isinstance(conf, np.ndarray) and len(conf) == len(d) else d.scores >= np.inf
        cand = (d.scores >= self.candidate_score) & np.isin(d.labels.astype(str), list(self.candidate_classes))
        return d[conf | cand]

    def _detect(self, indices: list[int]) -> tuple[list[Detections], list[bool]]:
        """Detections for the tracker and per-frame "analysis failed" flags, counted and timed."""
        if not indices:
            return [], []
        t0 = time.perf_counter()
        raw, failed = self.anonymizer.detect_or_mask([self.pending[i].rgb for i in indices],
                                                     min_score=self.detect_floor, all_detectors=self.all_detectors)
        _add_ms(self.timings, "detect", t0)
        self.frames_detected += len(indices)
        out = []
        for i, d in zip(indices, raw):
            self.pending[i].raw = d
            d = self._tracked(d)
            for label, n in d.counts().items():
                self.detected[label] = self.detected.get(label, 0) + n
            out.append(d)
        return out, failed

    def _mask(self, final: list[tuple[int, Detections]]) -> list[MaskedFrame]:
        out = []
        t0 = time.perf_counter()
        for idx, d in final:
            held = self.pending.pop(idx)
            rgb, failed = held.rgb, idx in self.failed
            if failed:
                if self.recorder is not None:
                    self.recorder.record_whole(idx, rgb)
                rgb = mask_whole_frame(rgb)
                self.masked["whole_frame"] = self.masked.get("whole_frame", 0) + 1
            else:
                if len(d):
                    rgb, _ = self.anonymizer.mask(rgb, d, self.ctx, idx)
                    for label, n in d.counts().items():
                        self.masked[label] = self.masked.get(label, 0) + n
                if self.residual is not None and self.residual.due(idx):
                    rgb = self.residual.check(rgb, idx, self.recorder)
            out.append(MaskedFrame(idx, rgb, held.rgb, held.meta, held.time_s, held.raw, d, failed))
        self.frames_out += len(out)
        _add_ms(self.timings, "mask", t0)
        return out
