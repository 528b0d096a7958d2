"""Decode audio files (any container/codec PyAV reads) to float32 and encode them back in the same format.

Same format means: same container, same codec family, same sample rate and channel count; lossy codecs get
about the input's bit rate. Encoders add priming samples (AAC 1024, Opus pre-skip, LAME delay); the muxers
record them (MP4 edit list, Ogg pre-skip, LAME/Xing tag) so decoders drop them and the duration is kept
within one codec frame. Tags and attached pictures (ID3 title/artist, cover art) are not copied: they can
identify people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

from anon_core.media.errors import CorruptMedia, TooLarge, UnsupportedMedia

# container format -> (muxer, codec used when the input codec has no encoder here)
_FAMILIES = {
    "wav": ("wav", "pcm_s16le"),
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "ogg": ("ogg", "libopus"),
    "m4a": ("ipod", "aac"),
}
# No working Vorbis encoder here (no libvorbis; ffmpeg's native one aborts the process on some signals), and
# Opus only runs at 48/24/16/12/8 kHz: other Ogg inputs get lossless FLAC-in-Ogg at their own rate.
_ENCODER_FOR = {"mp3": "libmp3lame", "mp3float": "libmp3lame", "opus": "libopus", "vorbis": "flac", "flac": "flac"}
OPUS_RATES = {48000, 24000, 16000, 12000, 8000}
DEFAULT_LOSSY_BIT_RATE = {"libmp3lame": 128_000, "libopus": 64_000, "aac": 128_000}


@dataclass
class DecodedAudio:
    samples: np.ndarray  # (channels, n) float32 in [-1, 1]
    sample_rate: int
    family: str  # wav | flac | mp3 | ogg | m4a
    codec: str  # decoder name of the input stream
    layout: str
    bit_rate: int
    sample_format: str
    tags: list[str] = field(default_factory=list)  # metadata keys present in the input (dropped on output)

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / float(self.sample_rate)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def family_of(container_name: str, fmt_hint: str = "") -> str:
    names = set(container_name.split(","))
    if fmt_hint in _FAMILIES:
        return fmt_hint
    for fam, keys in (("wav", {"wav"}), ("flac", {"flac"}), ("mp3", {"mp3"}), ("ogg", {"ogg"}),
                      ("m4a", {"mov", "mp4", "m4a", "ipod"})):
        if names & keys:
            return fam
    raise UnsupportedMedia(f"unsupported audio container {container_name!r}")


def decode(source: str | BinaryIO, fmt_hint: str = "", max_duration_s: float = 0.0) -> DecodedAudio:
    """Decode the first audio stream to (channels, n) float32 at its native sample rate."""
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptMedia(f"cannot open audio: {_short(exc)}") from exc
    try:
        if not container.streams.audio:
            raise CorruptMedia("no audio stream in file")
        stream = container.streams.audio[0]
        family = family_of(container.format.name, fmt_hint)
        ctx = stream.codec_context
        if ctx is None:  # a codec FFmpeg cannot decode (found by fuzzing: damaged WAV format tags)
            raise UnsupportedMedia("no decoder for the audio stream's codec")
        sr = int(ctx.sample_rate or 0)
        if sr <= 0:
            raise CorruptMedia("audio stream has no sample rate")
        tags = sorted(set(container.metadata) | set(stream.metadata))
        chunks: list[np.ndarray] = []
        total = 0
        layout, sample_fmt = ctx.layout.name, ctx.format.name if ctx.format else ""
        limit = int(max_duration_s * sr) if max_duration_s > 0 else 0
        try:
            for frame in container.decode(stream):
                arr = frame.to_ndarray()
                fmt = frame.format
                if not fmt.is_planar:  # packed: (1, n*ch) -> (ch, n)
                    arr = arr.reshape(-1, frame.layout.nb_channels).T
                chunks.append(to_float(arr, fmt.name))
                total += arr.shape[1]
                if limit and total > limit:
                    raise TooLarge(f"audio longer than the limit of {max_duration_s:.0f} s")
                layout = frame.layout.name
                if frame.sample_rate and frame.sample_rate != sr:
                    sr = int(frame.sample_rate)  # e.g. Opus always decodes at 48 kHz
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"audio decode error: {_short(exc)}") from exc
        if not chunks or total == 0:
            raise CorruptMedia("no decodable audio samples")
        samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
        return DecodedAudio(samples, sr, family, ctx.name, layout, int(stream.bit_rate or ctx.bit_rate or 0),
                            sample_fmt, tags)
    finally:
        container.close()


def to_float(arr: np.ndarray, fmt: str) -> np.ndarray:
    base = fmt.rstrip("p")
    if base in ("flt", "dbl"):
        return arr.astype(np.float32)
    if base == "s16":
        return arr.astype(np.float32) / 32768.0
    if base == "s32":
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if base == "u8":
        return (arr.astype(np.float32) - 128.0) / 128.0
    if base == "s64":
        return (arr.astype(np.float64) / 9.223372036854775808e18).astype(np.float32)
    raise UnsupportedMedia(f"unsupported sample format {fmt}")


def _encoder_name(dec: DecodedAudio) -> str:
    if dec.family == "wav":
        return dec.codec if dec.codec.startswith("pcm_") else "pcm_s16le"
    if dec.family == "flac":
        return "flac"
    if dec.family == "m4a":
        return "aac" if dec.codec != "alac" else "alac"
    name = _ENCODER_FOR.get(dec.codec, _FAMILIES[dec.family][1])
    if name == "libopus" and dec.sample_rate not in OPUS_RATES:
        name = "flac"
    return name


def encode(samples: np.ndarray, dec: DecodedAudio, out_path: str, bit_rate: int = 0) -> None:
    """Write (channels, n) float32 in the input's format (container, codec, rate, channels) to out_path."""
    muxer = _FAMILIES[dec.family][0]
    codec_name = _encoder_name(dec)
    samples = np.clip(np.nan_to_num(samples), -1.0, 1.0).astype(np.float32)
    channels = samples.shape[0]
    with av.open(out_path, mode="w", format=muxer) as out:
        stream = out.add_stream(codec_name, rate=dec.sample_rate)
        ctx = stream.codec_context
        layout = dec.layout if av.AudioLayout(dec.layout).nb_channels == channels else \
            ("mono" if channels == 1 else "stereo")
        ctx.layout = layout
        if codec_name in DEFAULT_LOSSY_BIT_RATE:
            ctx.bit_rate = bit_rate or dec.bit_rate or DEFAULT_LOSSY_BIT_RATE[codec_name]
            if codec_name == "libopus":
                ctx.bit_rate = min(max(ctx.bit_rate, 6000), 510_000)
        enc_fmt = _pick_format(stream, dec)
        ctx.format = enc_fmt
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.sample_rate = dec.sample_rate
        frame.pts = 0
        frame.time_base = Fraction(1, dec.sample_rate)
        # PyAV converts and re-chunks to the encoder's sample format and frame size itself
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _pick_format(stream, dec: DecodedAudio) -> str:
    """The encoder's sample format closest to the input's (keeps 24-bit WAV/FLAC at 24 bits)."""
    formats = [f.name for f in (stream.codec_context.codec.audio_formats or [])]
    if not formats:
        return "fltp"
    want = dec.sample_format
    if want in formats:
        return want
    for cand in (want.rstrip("p"), want.rstrip("p") + "p", "fltp", "flt", "s16", "s16p"):
        if cand in formats:
            return cand
    return formats[0]
