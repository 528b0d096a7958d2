"""Encode masked frames into the input's container family; remux side packets bit-exact.

Timing: every output frame gets the input frame's pts in the input stream's time base (VFR and
start offsets survive), and each packet its input frame's duration (so the last frame, and the
file's duration, are right). Rotation: the input's display matrix is written back verbatim
(PyAV >= 15 `set_display_matrix`), frames go back to their stored orientation, so players show
the output exactly as they showed the input. Audio: with `audio.anonymize_video_audio` the kept
audio streams are decoded as they pass, voice-anonymized and re-encoded after the last video frame
(see audio_track.py); otherwise they are remuxed bit-exact.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from anon_core.video.audio_track import VideoAudio
from anon_core.video.decode import VideoReader
from anon_core.video.gop import GopWriter
from anon_core.video.settings import EncoderSettings, VideoSettings
from anon_core.video.streams import filter_tags

MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm"}


class VideoWriter:
    def __init__(self, out_path: str, family: str, reader: VideoReader, settings: VideoSettings,
                 audio: VideoAudio | None = None) -> None:
        if family not in MUXERS:
            raise ValueError(f"no output container for {family!r}")
        self.family = family
        self.enc: EncoderSettings = settings.encoder_for(family)
        self.reader = reader
        self.rotation = reader.rotation
        w, h = reader.stored_size
        # yuv420p needs even sizes: pad odd ones by repeating the last row/column (recorded in the audit)
        self.pad = (w % 2, h % 2) if self.enc.pix_fmt.startswith(("yuv420", "yuv422", "nv12")) else (0, 0)
        self.size = (w + self.pad[0], h + self.pad[1])
        self.time_base: Fraction = reader.time_base
        self.audio = audio  # audio streams whose voices are anonymized (re-encoded) instead of copied
        options = {}
        if family in ("mp4", "mov") and settings.faststart:
            options["movflags"] = "+faststart"
        self.container = av.open(out_path, mode="w", format=MUXERS[family], options=options)
        try:
            self._add_video(reader, settings)
            self.copied: dict[int, av.stream.Stream] = {}
            for s in reader.plan.copy:
                if audio is not None and audio.handles(s.index):
                    audio.add_output(s.index, self.container)
                    continue
                out = self.container.add_stream_from_template(s)
                _set_metadata(out, filter_tags(dict(s.metadata), settings.allowed_stream_tags)[0])
                self.copied[s.index] = out
            for s in reader.plan.attachments:
                name = s.metadata.get("filename", f"attachment{s.index}")
                self.container.add_attachment(name, s.mimetype or "application/octet-stream", s.data)
            _set_metadata(self.container, reader.plan.container_tags)
            self.container.start_encoding()
        except BaseException:
            self.container.close()
            raise
        self.frames_written = 0
        self.packets_copied = 0
        self._durations: dict[int, int] = {}  # pts -> duration, for packets the encoder has not emitted yet
        self._last_pts: int | None = None

    def _add_video(self, reader: VideoReader, settings: VideoSettings) -> None:
        enc = self.enc
        self.gop: GopWriter | None = None
        if reader.gops is not None:  # GOP copy (gop.py): the track takes the input's packets where nothing changed
            src = reader.plan.video.codec_context
            rng = int(getattr(src, "color_range", 0) or 0)
            self._dst_range = rng if rng in (1, 2) else None
            # one dts delay for the whole track, deeper than B-frame reordering (x264's pyramid: 2 frames)
            delay = 4 * reader.default_duration
            self.gop = GopWriter(self.container, reader, enc, settings, self._dst_range, delay)
            st = self.gop.stream
            if reader.display_matrix:
                st.set_display_matrix(list(reader.display_matrix))
            _set_metadata(st, filter_tags(dict(reader.plan.video.metadata), settings.allowed_stream_tags)[0])
            self.stream = st
            return
        opts = dict(enc.options)
        if enc.codec in ("libx264", "libx265"):
            if enc.preset:
                opts.setdefault("preset", enc.preset)
            opts.setdefault("crf", str(enc.crf))
        elif enc.codec.startswith("libvpx") or enc.codec.startswith("libaom"):
            opts.setdefault("crf", str(enc.crf))
        rate = reader.rate if reader.rate.denominator < 100_000 else None
        st = self.container.add_stream(enc.codec, rate=rate, options=opts)
        st.width, st.height = self.size
        st.pix_fmt = enc.pix_fmt
        ctx = st.codec_context
        ctx.time_base = self.time_base
        ctx.thread_count = enc.threads
        src = reader.plan.video.codec_context
        for attr in ("color_primaries", "color_trc", "colorspace", "color_range"):
            try:  # keep the input's colour tags so players convert to RGB the same way
                setattr(ctx, attr, getattr(src, attr))
            except Exception:
                pass
        # RGB -> YUV must produce the range the stream is tagged with (full-range "yuvj" inputs
        # would otherwise be written limited-range but tagged full: washed-out output)
        rng = int(getattr(src, "color_range", 0) or 0)
        self._dst_range = rng if rng in (1, 2) else None
        st.time_base = self.time_base  # a hint; muxers with a fixed clock (Matroska: 1 ms) override it
        if reader.display_matrix:
            st.set_display_matrix(list(reader.display_matrix))
        _set_metadata(st, filter_tags(dict(reader.plan.video.metadata), settings.allowed_stream_tags)[0])
        self.stream = st

    # -- writing
    def write_frame(self, rgb_display: np.ndarray, pts: int, duration: int, gop: int | None = None,
                    unchanged: bool = False) -> None:
        rgb = rgb_display
        if self.rotation:
            rgb = np.rot90(rgb, -(self.rotation // 90))
        if self.gop is not None:
            self.gop.frame(np.ascontiguousarray(rgb), pts, duration, gop, unchanged)
            self._last_pts = pts
            self.frames_written += 1
            return
        if self.pad != (0, 0):
            rgb = np.pad(rgb, ((0, self.pad[1]), (0, self.pad[0]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self.enc.pix_fmt, dst_color_range=self._dst_range)
        frame.pts = pts
        frame.time_base = self.time_base
        self._durations[pts] = duration
        self._last_pts = pts
        self._mux(self.stream.encode(frame))
        self.frames_written += 1

    def write_packets(self, packets: list[av.Packet]) -> None:
        for p in packets:
            if self.audio is not None and p.stream is not None and self.audio.handles(p.stream.index):
                self.audio.feed(p)  # decoded now, anonymized and encoded in finish()
                continue
            out = self.copied.get(p.stream.index) if p.stream is not None else None
            if out is None:
                continue
            p.stream = out  # data untouched: bit-exact; the muxer rescales timestamps only
            self.container.mux_one(p)
            self.packets_copied += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            if p.pts is not None:
                d = self._durations.pop(p.pts, None)
                if d:
                    p.duration = d
            self.container.mux_one(p)

    def finish(self) -> None:
        if self.gop is not None:
            self.gop.finish()
        else:
            self._mux(self.stream.encode(None))
        if self.audio is not None:
            self.audio.finish(self.container)  # after the video: its frames and timestamps are already final
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # the output is deleted by the caller anyway
            pass

    def describe(self) -> dict:
        e = self.enc
        out = {"codec": e.codec, "preset": e.preset, "crf": e.crf, "threads": e.threads, "pix_fmt": e.pix_fmt,
               "options": dict(e.options), "container": MUXERS[self.family], "padded": list(self.pad)}
        if self.gop is not None:
            out["gop_copy"] = {**self.gop.stats, "sps_id": self.gop.sps_id, "dts_delay": self.gop.delay}
        return out


def _set_metadata(obj, tags: dict[str, str]) -> None:
    md = obj.metadata
    for k in list(md.keys()):
        del md[k]
    for k, v in tags.items():
        md[k] = v
