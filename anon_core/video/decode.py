"""Streaming decode: one pass over the container, video frames in batches, side packets passed through.

The source may be a non-seekable stream (fsspec file on S3), so the file is demuxed exactly once:
video packets are decoded to RGB frames, audio (and allow-listed) packets are handed on untouched
for bit-exact remuxing. Frames are rotated to their *display* orientation for analysis (detectors
expect upright faces); the encoder rotates them back and re-attaches the original display matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from anon_core.config import Limits
from anon_core.deadline import Deadline
from anon_core.media.errors import CorruptMedia, TooLarge, UnsupportedMedia
from anon_core.video.gop import Gop
from anon_core.video.settings import VideoSettings
from anon_core.video.streams import StreamPlan, plan_streams

_IDENTITY = (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)


@dataclass
class Frame:
    index: int  # 0-based decode order (= presentation order after the decoder's reordering)
    rgb: np.ndarray  # HxWx3 uint8 in display orientation
    pts: int  # in VideoReader.time_base
    duration: int  # in VideoReader.time_base
    gop: int | None = None  # the input GOP whose packets hold this frame (GOP copy; None: not tracked)
    unchanged: bool = False  # set by the engine's output: nothing was masked or changed in this frame


@dataclass
class Batch:
    frames: list[Frame] = field(default_factory=list)
    packets: list[av.Packet] = field(default_factory=list)  # side-stream packets demuxed meanwhile


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            m = tuple(int(x) for x in np.frombuffer(bytes(sd), dtype="<i4")[:9])
            return None if m == _IDENTITY else m
    return None


class VideoReader:
    """Opens the input, applies the stream plan, and yields batches of frames plus pass-through packets."""

    def __init__(self, source, settings: VideoSettings, limits: Limits) -> None:
        try:
            self.container = av.open(source, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"cannot open video container: {_short(exc)}") from exc
        try:
            self.plan: StreamPlan = plan_streams(self.container, settings)
            v = self.plan.video
            ctx = v.codec_context
            if ctx is None or not ctx.name:
                raise UnsupportedMedia("no decoder for the video stream's codec")
            ctx.thread_type = "AUTO"  # frame+slice threads; PyAV releases the GIL while decoding
            ctx.thread_count = 0
            self.codec = ctx.name
            self.stored_size = (ctx.width, ctx.height)
            if ctx.width <= 0 or ctx.height <= 0:
                raise CorruptMedia("video stream has no valid frame size")
            if ctx.width * ctx.height > limits.max_pixels or max(ctx.width, ctx.height) > limits.max_side:
                raise TooLarge(f"video frame {ctx.width}x{ctx.height} is above the size limit")
            if v.frames and v.frames > limits.max_video_frames:
                raise TooLarge(f"video has {v.frames} frames: above the limit of {limits.max_video_frames}")
            self.time_base: Fraction = v.time_base or Fraction(1, 90000)
            rate = v.average_rate or v.guessed_rate or v.base_rate or Fraction(25)
            self.rate: Fraction = Fraction(rate)
            self.nominal_frames = int(v.frames or 0)
            self.stream_duration, self.duration_slack = _announced_duration(self.container, v, self.time_base)
            self.stream_start = v.start_time
        except BaseException:
            self.container.close()
            raise
        self.limits = limits
        self.deadline = Deadline(0)  # the caller sets the asset's deadline; checked once per packet
        self.strict = settings.strict_frame_count
        self.default_duration = max(1, round(1 / (self.rate * self.time_base)))
        self.display_matrix: tuple[int, ...] | None = None
        self.rotation = 0  # counter-clockwise degrees, multiple of 90 used for analysis
        self.frames_decoded = 0
        self.pts_repaired = 0
        self.packets_passed = 0
        self.first_pts: int | None = None
        self.end_pts: int | None = None  # last pts + its duration
        self._last_pts: int | None = None
        self._pending_first: Batch | None = None
        # GOP copy (gop.py): the video packets of each GOP kept until the writer has decided it; None: off
        self.gops: dict[int, Gop] | None = None
        self.gop_max_bytes = 64 << 20
        self._gop: Gop | None = None
        self._gop_bytes = 0
        self._gop_counter = -1
        self._gop_of_pts: dict[int, int] = {}
        self._iter = self._frames()

    # -- public
    @property
    def display_size(self) -> tuple[int, int]:
        w, h = self.stored_size
        return (h, w) if self.rotation in (90, 270) else (w, h)

    def prime(self) -> None:
        """Decode the first frame now: its side data carries the display matrix the encoder needs."""
        batch = Batch()
        for item in self._iter:
            if isinstance(item, Frame):
                batch.frames.append(item)
                break
            batch.packets.append(item)
        if not batch.frames:
            raise CorruptMedia("no video frame could be decoded")
        self._pending_first = batch

    def batches(self, size: int) -> Iterator[Batch]:
        batch = self._pending_first or Batch()
        self._pending_first = None
        for item in self._iter:
            if isinstance(item, Frame):
                batch.frames.append(item)
                if len(batch.frames) >= size:
                    yield batch
                    batch = Batch()
            else:
                batch.packets.append(item)
        if batch.frames or batch.packets:
            yield batch
        self._check_complete()

    def close(self) -> None:
        self.container.close()

    # -- internals
    def _frames(self) -> Iterator[Frame | av.Packet]:
        v = self.plan.video
        passthrough = {s.index for s in self.plan.copy}
        streams = [v, *self.plan.copy]
        try:
            for packet in self.container.demux(streams):
                self.deadline.check("video decode")
                if self.gops is not None and packet.stream.index not in passthrough:
                    self._track_gop(packet)
                if packet.stream.index in passthrough:
                    if packet.size and packet.dts is not None:  # skip the demuxer's end-of-stream flush packets
                        self.packets_passed += 1
                        yield packet
                    continue
                for frame in packet.decode():
                    yield self._convert(frame)
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"video cannot be decoded after frame {self.frames_decoded}: {_short(exc)}") from exc

    def _track_gop(self, packet: av.Packet) -> None:
        """Group the video packets into GOPs (a keyframe and the packets up to the next one)."""
        assert self.gops is not None
        if not packet.size:  # the demuxer's end-of-stream flush packet
            if self._gop is not None:
                self._gop.closed = True
            return
        if packet.is_keyframe or self._gop is None:
            if self._gop is not None:
                self._gop.closed = True
            self._gop_counter += 1
            self._gop = Gop(self._gop_counter)
            self._gop.oversized = not packet.is_keyframe  # a stream that does not start at a keyframe
            self.gops[self._gop.index] = self._gop
            self._gop_bytes = 0
        g = self._gop
        if g.oversized:
            return
        if packet.pts is None or self._gop_bytes + packet.size > self.gop_max_bytes:
            g.oversized = True  # not copied; the packets kept so far stay for re-decoding its first frames
            return
        self._gop_bytes += packet.size
        g.packets.append(packet)
        g.pts.append(int(packet.pts))
        self._gop_of_pts[int(packet.pts)] = g.index

    def _convert(self, frame: av.VideoFrame) -> Frame:
        if frame.is_corrupt:
            raise CorruptMedia(f"frame {self.frames_decoded} is corrupt")
        if self.frames_decoded == 0:
            self.display_matrix = _display_matrix(frame)
            self.rotation = (round(frame.rotation / 90) * 90) % 360 if self.display_matrix else 0
        if self.frames_decoded >= self.limits.max_video_frames:
            raise TooLarge(f"video has more than {self.limits.max_video_frames} frames")
        if (frame.width, frame.height) != self.stored_size:
            # A mid-stream resolution change would need a new encoder; refuse rather than guess.
            raise UnsupportedMedia(
                f"frame size changes mid-stream ({self.stored_size} -> {frame.width}x{frame.height})"
            )
        gop = self._gop_of_pts.pop(frame.pts, None) if frame.pts is not None else None
        pts = frame.pts
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + self.default_duration
            self.pts_repaired += 1
        elif self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # encoders need strictly increasing pts
            self.pts_repaired += 1
            gop = None  # not the input's timing: never copied
        dur = frame.duration if frame.duration and frame.duration > 0 else self.default_duration
        rgb = frame.to_ndarray(format="rgb24")
        if self.rotation:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.rotation // 90))
        out = Frame(self.frames_decoded, rgb, int(pts), int(dur), gop)
        if self.first_pts is None:
            self.first_pts = out.pts
        self._last_pts = out.pts
        self.end_pts = out.pts + out.duration
        self.frames_decoded += 1
        return out

    def _check_complete(self) -> None:
        """A truncated file demuxes to a clean EOF; compare with what the container announced."""
        n, expected = self.frames_decoded, self.nominal_frames
        if n == 0:
            raise CorruptMedia("no video frame could be decoded")
        if not self.strict:
            return
        # Edit lists may legitimately hide a few leading frames; a larger shortfall is truncation.
        if expected and n < expected - max(2, expected // 100):
            raise CorruptMedia(f"video is truncated or damaged: {n} of {expected} frames decoded")
        if self.stream_duration and self.end_pts is not None and self.first_pts is not None:
            start = self.stream_start if self.stream_start is not None else self.first_pts
            covered = (self.end_pts - start) * self.time_base
            slack = max(Fraction(3) / self.rate, self.duration_slack)
            if covered + slack < self.stream_duration:
                raise CorruptMedia(
                    f"video is truncated: frames cover {float(covered):.2f} s of {float(self.stream_duration):.2f} s"
                )


def _announced_duration(container, v: av.VideoStream, tb: Fraction) -> tuple[Fraction | None, Fraction]:
    """The video's duration as the container states it, and how much shortfall to tolerate.

    MP4/MOV: the track duration. Matroska has no per-track duration field; FFmpeg and mkvmerge write
    a DURATION tag per track. Last resort: the file's duration (the longest stream, often audio that
    runs on a little after the picture), with a larger tolerance.
    """
    if v.duration:
        return v.duration * tb, Fraction(1, 5)
    tag = v.metadata.get("DURATION") or v.metadata.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return Fraction(int(h) * 3600 + int(m) * 60) + Fraction(sec), Fraction(1, 5)
        except ValueError:
            pass
    if container.duration:
        return Fraction(container.duration, 1_000_000), Fraction(1)
    return None, Fraction(1)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
