"""Voice anonymization for the audio tracks of videos (``audio.anonymize_video_audio``).

The input is demuxed exactly once (it may be a non-seekable stream), so each kept audio stream is handled
like this:

1. during the video pass its packets are decoded as they arrive (the input stream's own decoder, which
   also drops the encoder priming the container announces) and kept in memory as float32, bounded by
   ``audio.max_duration_s``;
2. after the last video frame has been encoded, the whole track goes through ``anonymize_waveform``
   (VAD, speakers, voice transform, mute ranges);
3. the result is encoded with the same codec family (AAC stays AAC, Opus stays Opus, ...), the same
   sample rate and channel count, with its first sample at the input track's first presentation time,
   and muxed after the video. Sync therefore holds within one audio frame.

Fail closed: any error (decode, voice transform, encode, a duration mismatch) propagates, so the asset
fails and no file with the original voice is published.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

from anon_core.audio.io import DEFAULT_LOSSY_BIT_RATE, OPUS_RATES, to_float
from anon_core.audio.settings import AudioSettings
from anon_core.media.errors import CorruptMedia, TooLarge, UnsupportedMedia

# input decoder name -> encoder; anything else is written as AAC (Opus in WebM, which allows nothing else).
# PCM in MOV/MKV is written as the same PCM codec.
_ENCODER = {
    "aac": "aac", "aac_fixed": "aac", "opus": "libopus", "libopus": "libopus", "mp3": "libmp3lame",
    "mp3float": "libmp3lame", "flac": "flac", "alac": "alac",
}
_ALLOWED = {  # container family -> encoders its muxer takes
    "mp4": {"aac", "libopus", "libmp3lame", "flac", "alac"},
    "mov": {"aac", "libmp3lame", "alac"},
    "mkv": {"aac", "libopus", "libmp3lame", "flac", "alac"},
    "webm": {"libopus"},
}


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class _Track:
    """One input audio stream: decoded samples in, anonymized stream out."""

    def __init__(self, stream: av.AudioStream, family: str, settings: AudioSettings) -> None:
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise UnsupportedMedia(f"no decoder for audio stream #{stream.index}")
        self.index = stream.index
        self.ctx = ctx
        self.codec_in = ctx.name
        self.sample_rate = int(ctx.sample_rate or 0)
        if self.sample_rate <= 0:
            raise CorruptMedia(f"audio stream #{stream.index} has no sample rate")
        self.channels = int(ctx.channels or ctx.layout.nb_channels or 0)
        self.layout = ctx.layout.name
        self.bit_rate = int(stream.bit_rate or ctx.bit_rate or 0)
        self.in_time_base: Fraction = stream.time_base or Fraction(1, self.sample_rate)
        self.limit = int(settings.max_duration_s * self.sample_rate) if settings.max_duration_s > 0 else 0
        self.chunks: list[np.ndarray] = []
        self.samples_in = 0
        self.first_time: Fraction | None = None  # presentation time of the first decoded sample (s)
        self.packets_in = 0
        codec = _ENCODER.get(self.codec_in, "aac")
        if self.codec_in.startswith("pcm_") and family in ("mov", "mkv"):
            codec = self.codec_in  # camera MOVs often carry PCM: stays lossless, same sample format
        elif codec not in _ALLOWED[family]:
            codec = "libopus" if family == "webm" else "aac"
        if codec == "libopus" and self.sample_rate not in OPUS_RATES:
            raise UnsupportedMedia(f"audio at {self.sample_rate} Hz cannot be re-encoded as Opus "
                                   f"(needs one of {sorted(OPUS_RATES)} Hz)")
        self.codec_out = codec
        self.out: av.AudioStream | None = None
        self.packets_out = 0
        self.samples_out = 0

    # -- output stream (added before the container starts writing)
    def add_output(self, container: av.container.OutputContainer, bit_rate: int) -> None:
        st = container.add_stream(self.codec_out, rate=self.sample_rate)
        ctx = st.codec_context
        try:
            layout = self.layout if av.AudioLayout(self.layout).nb_channels == self.channels else None
        except Exception:  # unknown layout names
            layout = None
        ctx.layout = layout or ("mono" if self.channels == 1 else "stereo" if self.channels == 2 else self.channels)
        if av.AudioLayout(ctx.layout.name).nb_channels != self.channels:
            raise UnsupportedMedia(f"cannot encode {self.channels} audio channels")
        if self.codec_out in DEFAULT_LOSSY_BIT_RATE:
            rate = bit_rate or self.bit_rate or DEFAULT_LOSSY_BIT_RATE[self.codec_out]
            ctx.bit_rate = min(max(rate, 6000), 510_000) if self.codec_out == "libopus" else rate
        formats = [f.name for f in (ctx.codec.audio_formats or [])]
        ctx.format = "fltp" if not formats or "fltp" in formats else formats[0]  # PyAV converts the frames
        ctx.time_base = Fraction(1, self.sample_rate)
        st.time_base = Fraction(1, self.sample_rate)  # a hint; Matroska/WebM use 1 ms
        self.out = st

    # -- input
    def feed(self, packet: av.Packet | None) -> None:
        try:
            frames = self.ctx.decode(packet)
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"audio stream #{self.index} cannot be decoded: {_short(exc)}") from exc
        if packet is not None:
            self.packets_in += 1
        for f in frames:
            arr = f.to_ndarray()
            if not f.format.is_planar:
                arr = arr.reshape(-1, f.layout.nb_channels).T
            if arr.shape[0] != self.channels or (f.sample_rate and int(f.sample_rate) != self.sample_rate):
                raise UnsupportedMedia(f"audio stream #{self.index} changes its layout or sample rate mid-stream")
            if self.first_time is None:
                tb = f.time_base or self.in_time_base
                self.first_time = Fraction(f.pts) * tb if f.pts is not None else Fraction(0)
            self.chunks.append(to_float(arr, f.format.name))
            self.samples_in += arr.shape[1]
            if self.limit and self.samples_in > self.limit:
                raise TooLarge(f"audio track longer than the limit of {self.limit / self.sample_rate:.0f} s")

    # -- output
    def finish(self, container: av.container.OutputContainer, settings: AudioSettings, key: bytes | None,
               asset_id: str, mute_ranges) -> dict[str, Any]:
        from anon_core.audio.anonymize import anonymize_waveform

        self.feed(None)  # drain the decoder
        if not self.samples_in:
            raise CorruptMedia(f"audio stream #{self.index} has no decodable samples")
        x = np.concatenate(self.chunks, axis=1).astype(np.float32, copy=False)
        self.chunks = []
        # the tracks of a video are timed against the video: mute ranges are in the video's clock
        start_s = float(self.first_time or 0)
        ranges = [(a - start_s, b - start_s) for a, b in (mute_ranges or []) if b - start_s > 0]
        y, report = anonymize_waveform(x, self.sample_rate, settings, key, asset_id=asset_id, mute_ranges=ranges)
        if y.shape != x.shape:
            raise RuntimeError(f"voice anonymization changed the track shape {x.shape} -> {y.shape}")
        st = self.out
        y = np.ascontiguousarray(np.clip(np.nan_to_num(y), -1.0, 1.0).astype(np.float32))
        frame = av.AudioFrame.from_ndarray(y, format="fltp", layout=st.codec_context.layout.name)
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = int(round((self.first_time or 0) * self.sample_rate))
        try:
            for p in st.encode(frame):
                self._mux(container, p)
            for p in st.encode(None):
                self._mux(container, p)
        except av.error.FFmpegError as exc:
            raise RuntimeError(f"audio stream #{self.index} cannot be re-encoded: {_short(exc)}") from exc
        self.samples_out = int(y.shape[1])
        report.update(stream=self.index, codec_in=self.codec_in, codec_out=self.codec_out,
                      start_s=round(start_s, 6), packets_in=self.packets_in, packets_out=self.packets_out)
        return report

    def _mux(self, container, packet: av.Packet) -> None:
        container.mux_one(packet)
        self.packets_out += 1


class VideoAudio:
    """The audio streams of one video whose voices are anonymized instead of copied bit-exact."""

    def __init__(self, streams: list[av.AudioStream], family: str, settings: AudioSettings, key: bytes | None,
                 asset_id: str = "", mute_ranges=None, deadline=None) -> None:
        self.settings = settings
        self.key = key
        self.asset_id = asset_id
        self.mute_ranges = list(mute_ranges or [])
        self.deadline = deadline
        self.tracks = {s.index: _Track(s, family, settings) for s in streams}
        self.reports: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    def handles(self, index: int) -> bool:
        return index in self.tracks

    def add_output(self, index: int, container) -> None:
        self.tracks[index].add_output(container, self.settings.bit_rate)

    def feed(self, packet: av.Packet) -> None:
        t0 = time.perf_counter()
        self.tracks[packet.stream.index].feed(packet)
        self.timings["audio_decode"] = self.timings.get("audio_decode", 0.0) + (time.perf_counter() - t0) * 1000

    def finish(self, container) -> None:
        """Anonymize and encode every track into `container` (call after the video stream is flushed)."""
        t0 = time.perf_counter()
        for t in self.tracks.values():
            if self.deadline is not None:
                self.deadline.check("video audio")
            self.reports.append(t.finish(container, self.settings, self.key, self.asset_id, self.mute_ranges))
        self.timings["audio_anonymize"] = (time.perf_counter() - t0) * 1000

    def report(self) -> dict[str, Any]:
        """For rec.extra["audio"]: one track's report as is, several under "tracks" (never the key)."""
        if len(self.reports) == 1:
            return dict(self.reports[0])
        return {"tracks": [dict(r) for r in self.reports],
                "speech_s": round(sum(r.get("speech_s", 0.0) for r in self.reports), 3),
                "speakers": sum(r.get("speakers", 0) for r in self.reports)}
