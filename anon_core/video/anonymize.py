"""Video orchestration: decode -> detect (batched) -> track/schedule -> mask -> encode, pipelined.

Three stages connected by bounded queues, each in its own thread when `pipelining` is on:

    decode (thread)  --batches-->  detect+track+mask (thread)  --frames/packets-->  encode (caller's thread)

PyAV (decode, swscale, x264), ONNX Runtime and OpenCV release the GIL, so the stages overlap on
separate cores. Memory is bounded: at most `queue_batches` batches wait between stages and the
mask scheduler holds back `lookahead` frames, independent of the video's length.

Fail closed: any stage error stops the others, the partial output is closed and the exception
(CorruptMedia etc.) propagates so the caller deletes the file and records why.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from anon_core.deadline import Deadline
from anon_core.detections import Detections
from anon_core.media.errors import UnsupportedMedia
from anon_core.tracking import MaskScheduler
from anon_core.video.decode import Batch, Frame, VideoReader
from anon_core.video.encode import MUXERS, VideoWriter
from anon_core.video.settings import VideoSettings

T = TypeVar("T")
_END = object()


class _Cancelled(Exception):
    pass


class _Pipeline:
    """Shared stop flag + first error for the stage threads."""

    def __init__(self, deadline: Deadline | None = None) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self.deadline = deadline or Deadline(0)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                self.deadline.check("video")  # a stalled downstream stage must not block past the limit
                continue
        raise _Cancelled

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():  # checked first: after a failure nothing more is consumed
                if self.error is not None:
                    raise self.error
                raise _Cancelled
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                self.deadline.check("video")  # a stalled upstream stage (decoder, detector) must not hang us
                continue

    def prefetch(self, it: Iterable[T], maxsize: int, name: str) -> Iterator[T]:
        """Run `it` in a thread, buffering up to `maxsize` items; errors surface in the consumer."""
        q: queue.Queue = queue.Queue(maxsize)

        def work() -> None:
            try:
                for x in it:
                    self.put(q, x)
                self.put(q, _END)
            except _Cancelled:
                pass
            except BaseException as exc:  # handed to the consumer thread
                self.fail(exc)

        t = threading.Thread(target=work, name=f"anon-video-{name}", daemon=True)
        t.start()
        self.threads.append(t)
        while True:
            x = self.get(q)
            if x is _END:
                return
            yield x

    def shutdown(self, grace_s: float = 30.0) -> list[str]:
        """Stop the stages; returns the names of threads still stuck in a native call after `grace_s`."""
        self.stop.set()
        end = time.monotonic() + grace_s
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


def _add_ms(timings: dict[str, float], key: str, t0: float) -> None:
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000


def _weak_hits(hits: int, k: int) -> int:
    """Analysed frames a weak track needs: the same stretch of video whatever k is, but never one lone hit."""
    return hits if k == 1 or hits == 0 else max(2, -(-hits // k))


class _Analyser:
    """Detect on every k-th frame, push to the scheduler, mask frames as they become final."""

    def __init__(self, anonymizer, settings: VideoSettings, reader: VideoReader, timings: dict[str, float],
                 ctx=None):
        self.anonymizer = anonymizer
        # per-asset mask state (vault recorder, subject tracks), passed through to mask application
        self.ctx = ctx if ctx is not None else anonymizer.mask_context()
        self.recorder = self.ctx.recorder
        # fail closed: frames whose analysis failed (on_analysis_error=mask_frame) are masked whole
        self.failed: set[int] = set()
        self.residual = anonymizer.residual.session(float(reader.rate)) if anonymizer.residual else None
        self.k = settings.detect_every_k
        self.candidate_score = settings.candidate_score
        fps = float(reader.rate)
        self.scheduler = MaskScheduler.from_seconds(
            fps, settings.lookahead_s, settings.lead_s, settings.trail_s,
            # with sparse detection the gap between two detector frames must still be interpolated
            max(settings.max_gap_s, (self.k + 1) / fps),
            frame_size=reader.display_size, mask_thresh=settings.mask_thresh,
            # the evidence a weak track needs spans the same stretch of video whatever k is (at least 2 hits)
            weak_min_hits=_weak_hits(settings.weak_track_hits, self.k),
        )
        self.pending: dict[int, Frame] = {}  # frames waiting for the scheduler's verdict
        self.timings = timings
        self.detected: dict[str, int] = {}
        self.masked: dict[str, int] = {}
        self.frames_detected = 0
        self.max_pending = 0
        self.last_pushed = -1

    def run(self, batches: Iterable[Batch]) -> Iterator[list]:
        for batch in batches:
            out: list = [batch.packets] if batch.packets else []
            todo = [f for f in batch.frames if f.index % self.k == 0]
            dets, failed = self._detect(todo)
            for f, bad in zip(todo, failed):
                if bad:  # frames interpolated from this one are unchecked too
                    self.failed.update(range(max(0, f.index - self.k + 1), f.index + self.k))
            by_index = {f.index: d for f, d in zip(todo, dets)}
            for f in batch.frames:
                self.pending[f.index] = f
                d = by_index.get(f.index)
                if d is None:
                    continue  # the scheduler treats skipped indices as frames without detections
                t0 = time.perf_counter()
                final = self.scheduler.push(f.index, d)
                self.last_pushed = f.index
                _add_ms(self.timings, "track", t0)
                out += self._mask(final)
            self.max_pending = max(self.max_pending, len(self.pending))
            if out:
                yield out
        t0 = time.perf_counter()
        final = self._flush()
        _add_ms(self.timings, "track", t0)
        rest = self._mask(final)
        if self.pending:  # fail closed: a frame the scheduler never released would go out unchecked
            raise RuntimeError(f"{len(self.pending)} frames were never scheduled for masking")
        if rest:
            yield rest

    def _flush(self) -> list[tuple[int, Detections]]:
        # Frames after the last detector frame (detect_every_k > 1) have no later evidence to interpolate
        # towards: analyse them too rather than extrapolate into the end of the stream.
        out = []
        tail = [self.pending[i] for i in sorted(self.pending) if i > self.last_pushed]
        for f, d, bad in zip(tail, *self._detect(tail)):
            if bad:
                self.failed.add(f.index)
            out += self.scheduler.push(f.index, d)
        return out + self.scheduler.flush()

    def _detect(self, frames: list[Frame]) -> tuple[list[Detections], list[bool]]:
        """Detections (down to the candidate score) and per-frame "analysis failed" flags, counted and timed."""
        if not frames:
            return [], []
        t0 = time.perf_counter()
        dets, failed = self.anonymizer.detect_or_mask([f.rgb for f in frames], min_score=self.candidate_score)
        _add_ms(self.timings, "detect", t0)
        self.frames_detected += len(frames)
        for d in dets:
            for label, n in d.counts().items():
                self.detected[label] = self.detected.get(label, 0) + n
        return dets, failed

    def _mask(self, final: list[tuple[int, Detections]]) -> list:
        out = []
        t0 = time.perf_counter()
        for idx, d in final:
            f = self.pending.pop(idx)
            rgb = f.rgb
            if idx in self.failed:
                from anon_core.pipeline import mask_whole_frame

                if self.recorder is not None:
                    self.recorder.record_whole(idx, rgb)
                rgb = mask_whole_frame(rgb)
                self.masked["whole_frame"] = self.masked.get("whole_frame", 0) + 1
                out.append(Frame(f.index, rgb, f.pts, f.duration))
                continue
            if len(d):
                rgb, _ = self.anonymizer.mask(rgb, d, self.ctx, idx)
                for label, n in d.counts().items():
                    self.masked[label] = self.masked.get(label, 0) + n
            if self.residual is not None and self.residual.due(idx):
                rgb = self.residual.check(rgb, idx, self.recorder)
            out.append(Frame(f.index, rgb, f.pts, f.duration))
        _add_ms(self.timings, "mask", t0)
        return out


def _video_audio(audio, reader: VideoReader, family: str, rec, deadline: Deadline):
    """The kept audio streams' voice anonymizer when `audio.anonymize_video_audio` is on, else None (bit-exact)."""
    streams = [s for s in reader.plan.copy if s.type == "audio"]
    if not audio.anonymize_video_audio or not streams:
        return None
    from anon_core.audio.anonymize import load_ranges
    from anon_core.audio.targets import load_key
    from anon_core.video.audio_track import VideoAudio

    return VideoAudio(streams, family, audio, load_key(audio), asset_id=getattr(rec, "input_sha256", "") or "",
                      mute_ranges=load_ranges(audio), deadline=deadline)


def anonymize_video(anonymizer, source, out_path: str, media, rec, deadline: Deadline | None = None,
                    ctx=None) -> None:
    """Anonymize one video from `source` (local path or binary file object) into `out_path`.

    Fills `rec` (size, frames, duration, detections, masked, metadata_removed, timings, extra) and
    raises an AssetError subclass for inputs that cannot be processed safely.
    """
    settings: VideoSettings = anonymizer.config.video
    family = media.format
    if family not in MUXERS:
        raise UnsupportedMedia(f"unsupported video container {family!r} (supported: {', '.join(MUXERS)})")
    timings = rec.timings_ms
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    deadline = deadline or Deadline(0)
    reader = VideoReader(source, settings, anonymizer.config.limits)
    reader.deadline = deadline
    writer: VideoWriter | None = None
    pipe = _Pipeline(deadline)
    ok = False
    voice = None
    stuck: list[str] = []
    try:
        reader.prime()
        _add_ms(timings, "decode", t0)
        voice = _video_audio(anonymizer.config.audio, reader, family, rec, deadline)
        writer = VideoWriter(out_path, family, reader, settings, audio=voice)
        analyser = _Analyser(anonymizer, settings, reader, timings, ctx)

        def decoded() -> Iterator[Batch]:
            it = reader.batches(settings.batch_size)
            while True:
                t = time.perf_counter()
                b = next(it, None)
                _add_ms(timings, "decode", t)
                if b is None:
                    return
                yield b

        batches: Iterable[Batch] = decoded()
        if settings.pipelining:
            batches = pipe.prefetch(batches, settings.queue_batches, "decode")
        results: Iterable[list] = analyser.run(batches)
        if settings.pipelining:
            results = pipe.prefetch(results, settings.queue_batches, "analyse")
        for items in results:
            deadline.check("video")
            t = time.perf_counter()
            for item in items:
                if isinstance(item, Frame):
                    writer.write_frame(item.rgb, item.pts, item.duration)
                else:
                    writer.write_packets(item)
            _add_ms(timings, "encode", t)
        t = time.perf_counter()
        writer.finish()
        _add_ms(timings, "encode", t)
        if writer.frames_written != reader.frames_decoded:
            raise RuntimeError(f"wrote {writer.frames_written} of {reader.frames_decoded} frames")
        # fail closed: every k-th frame and the tail after the last one must have gone through the detectors
        # (the rest through the tracker)
        n, k = reader.frames_decoded, settings.detect_every_k
        expected = (n + k - 1) // k + ((n - 1) % k if n else 0)
        if analyser.frames_detected != expected:
            raise RuntimeError(f"{analyser.frames_detected} frames analysed, expected {expected}: "
                               "output not published")
        ok = True
    finally:
        stuck = pipe.shutdown()
        if writer is not None and not ok:
            writer.abort()
        if any(name.endswith("decode") for name in stuck):
            # closing the container under a decoder that is still running could crash the process: leak it
            logging.getLogger(__name__).error("video decoder thread did not stop; leaving its input open")
        else:
            reader.close()
    timings["video_wall"] = (time.perf_counter() - t_start) * 1000

    rec.width, rec.height = reader.display_size
    rec.frames = reader.frames_decoded
    rec.duration_s = float((reader.end_pts - reader.first_pts) * reader.time_base)
    rec.detections = dict(analyser.detected)
    rec.masked = dict(analyser.masked)
    if analyser.failed:
        rec.extra["analysis_errors"] = {"frames_masked_whole": analyser.masked.get("whole_frame", 0),
                                        "policy": anonymizer.config.on_analysis_error}
    if analyser.residual is not None:
        rec.extra["residual"] = analyser.residual.report()
    rec.metadata_removed = reader.plan.removed()
    plan = reader.plan.to_dict()
    if voice is not None:
        for info in plan["streams_copied"]:
            if voice.handles(info["index"]):
                info["voice_anonymized"] = True  # re-encoded, not copied bit-exact
        report = voice.report()
        for k, v in report.pop("timings_ms", {}).items():
            timings[f"audio_{k}"] = v
        timings.update(voice.timings)
        rec.extra["audio"] = report
    wall = timings["video_wall"] / 1000
    rec.extra.update({
        "tracks": analyser.scheduler.stats(),
        **plan,
        "encoder": writer.describe(),
        "video": {
            "codec_in": reader.codec,
            "time_base": str(reader.time_base),
            "average_rate": float(reader.rate),
            "rotation": reader.rotation,
            "display_matrix": list(reader.display_matrix) if reader.display_matrix else None,
            "pts_repaired": reader.pts_repaired,
            "packets_copied": writer.packets_copied,
            "frames_detected": analyser.frames_detected,
            "detect_every_k": settings.detect_every_k,
            "batch_size": settings.batch_size,
            "pipelining": settings.pipelining,
            "max_frames_held": analyser.max_pending,
            "fps": round(reader.frames_decoded / wall, 2) if wall > 0 else None,
        },
    })

