"""Video orchestration: decode -> detect (batched) -> track/schedule -> mask -> encode, pipelined.

Three stages connected by bounded queues, each in its own thread when `pipelining` is on (the middle one is
the frame engine, `anon_core/video/session.py`, which every other frame path uses too):

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
from anon_core.media.errors import UnsupportedMedia
from anon_core.video.decode import Batch, Frame, VideoReader
from anon_core.video.encode import MUXERS, VideoWriter
from anon_core.video.session import FrameSession
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


def _analysed(session: FrameSession, batches: Iterable[Batch], time_base: float) -> Iterator[list]:
    """Decoded batches through the frame engine: packets to copy and masked frames, in output order."""
    def frames(masked: list) -> list[Frame]:
        # unchanged: the engine handed the source frame back untouched (nothing masked, not failed, no
        # residual re-mask) -- what GOP copy needs to hold for every frame of a copied GOP
        return [Frame(m.meta.index, m.rgb, m.meta.pts, m.meta.duration, m.meta.gop,
                      unchanged=m.rgb is m.source and not m.failed and len(m.final) == 0) for m in masked]

    for batch in batches:
        out: list = [batch.packets] if batch.packets else []
        out += frames(session.push([f.rgb for f in batch.frames], metas=batch.frames,
                                   times_s=[f.pts * time_base for f in batch.frames]))
        if out:
            yield out
    rest = frames(session.flush())
    if rest:
        yield rest


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
    gop_refused = None
    if settings.gop_copy:
        from anon_core.video.gop import eligible

        enc = settings.encoder_for(family)
        w, h = reader.stored_size
        pad = (w % 2, h % 2) if enc.pix_fmt.startswith(("yuv420", "yuv422", "nv12")) else (0, 0)
        gop_refused = eligible(reader, family, enc, pad)
        if gop_refused is None:
            reader.gops = {}  # before prime(): the first GOP's packets are demuxed there
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
        session = FrameSession(anonymizer, float(reader.rate), reader.display_size, kind="video", ctx=ctx,
                               record=rec, timings=timings)

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
        results: Iterable[list] = _analysed(session, batches, float(reader.time_base))
        if settings.pipelining:
            results = pipe.prefetch(results, settings.queue_batches, "analyse")
        for items in results:
            deadline.check("video")
            t = time.perf_counter()
            for item in items:
                if isinstance(item, Frame):
                    writer.write_frame(item.rgb, item.pts, item.duration, item.gop, item.unchanged)
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
        session.verify()
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
    rec.detections = dict(session.detected)
    rec.masked = dict(session.masked)
    if session.failed:
        rec.extra["analysis_errors"] = {"frames_masked_whole": session.masked.get("whole_frame", 0),
                                        "policy": anonymizer.config.on_analysis_error}
    if session.residual is not None:
        rec.extra["residual"] = session.residual.report()
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
        "tracks": session.scheduler.stats(),
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
            "gop_copy": "on" if reader.gops is not None else (gop_refused or "off"),
            "frames_detected": session.frames_detected,
            # every analysed_every-th frame (and the tail) went through the detectors; the others were interpolated
            "analysed_every": session.configured_k,
            "detect_every_k": settings.detect_every_k,
            "adaptive": session.adaptive_report() if session.adaptive else None,
            "batch_size": settings.batch_size,
            "pipelining": settings.pipelining,
            "max_frames_held": session.max_pending,
            "fps": round(reader.frames_decoded / wall, 2) if wall > 0 else None,
        },
    })

