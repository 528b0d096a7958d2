"""Audio orchestration: decode -> VAD -> speakers -> per-speaker voice transform -> mute ranges -> encode.

`anonymize_waveform` is the in-memory core (also meant for the audio tracks of videos); `anonymize_audio`
wraps it for one audio file and fills the audit record.
"""

from __future__ import annotations

import logging
import time
from typing import Any, BinaryIO

import numpy as np

from anon_core.audio import io as audio_io
from anon_core.audio.bleep import transcript_ranges
from anon_core.audio.ranges import apply_ranges, parse_ranges
from anon_core.audio.resynth import active_level_gain, resynthesize
from anon_core.audio.settings import DEFAULT_SPEECH_LEVEL_DBFS, AudioSettings
from anon_core.audio.speakers import AudioConfigError, diarize
from anon_core.audio.targets import asset_seed, draw_target, load_key, speaker_rng
from anon_core.audio.vad import detect_speech, to_rate
from anon_core.audio.voice import (
    VoiceTarget,
    mcadams,
    median_f0,
    pitch_shift,
    world_analyze,
    world_available,
    world_convert,
    world_f0,
)
from anon_core.deadline import Deadline
from anon_core.media.errors import CorruptMedia

log = logging.getLogger(__name__)

_FADE_S = 0.02  # crossfade between transformed speech and the untouched signal
_BLOCK_S = 20.0  # long turns are transformed in blocks (bounded WORLD memory), crossfaded


def _merge(segs: list[tuple[float, float]], pad: float, duration: float) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(segs):
        a, b = max(0.0, a - pad), min(duration, b + pad)
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out if b > a]


def _transform(x: np.ndarray, sr: int, method: str, target: VoiceTarget, src_f0: float) -> np.ndarray:
    if method == "world":
        return world_convert(world_analyze(x, sr), target, src_f0)
    if method == "mcadams":
        return mcadams(x, sr, target.mcadams)
    if method == "pitch":
        return pitch_shift(x, sr, target.semitones)
    return x


def _blocks(n: int, sr: int) -> list[tuple[int, int]]:
    block, ov = int(_BLOCK_S * sr), int(_FADE_S * sr)
    if n <= block:
        return [(0, n)]
    out, start = [], 0
    while start < n:
        end = min(n, start + block)
        out.append((start, end))
        if end == n:
            break
        start = end - ov
    return out


def _fade_window(n: int, k: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    w = np.ones(n, np.float32)
    k = min(k, n // 2)
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k, dtype=np.float32))
        if fade_in:
            w[:k] = ramp
        if fade_out:
            w[n - k:] = ramp[::-1]
    return w


def anonymize_waveform(samples: np.ndarray, sample_rate: int, settings: AudioSettings | None = None,
                       key: bytes | None = None, *, asset_id: str = "",
                       mute_ranges: list[tuple[float, float]] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Anonymize voices in a (channels, n) float32 waveform; returns the same shape and a report for the audit.

    key: secret key bytes (None: random targets per call, i.e. per asset). The report never contains the key or
    the per-speaker targets (they would help invert the transform).
    asset_id: mixed into keyed targets when settings.key_scope == "asset" (e.g. the input's sha256).
    mute_ranges: extra [(start_s, end_s)] to silence/beep on top of settings.mute_ranges.
    """
    settings = settings or AudioSettings()
    x = np.asarray(samples, np.float32)
    if x.ndim == 1:
        x = x[None]
    sr = int(sample_rate)
    n = x.shape[1]
    duration = n / float(sr)
    timings: dict[str, float] = {}
    method = settings.method if settings.enabled else "none"
    if method == "world" and not world_available():
        log.warning("pyworld is not installed: using the McAdams method instead")
        method = "mcadams"
    report: dict[str, Any] = {"method": method, "params": settings.public_params(), "keyed": bool(key),
                              "sample_rate": sr, "channels": int(x.shape[0]), "duration_s": round(duration, 3)}
    y = x.copy()
    speech: list[tuple[float, float]] = []
    turns: list[tuple[float, float, str]] = []
    ranges = [(float(a), float(b)) for a, b in settings.mute_ranges] + list(mute_ranges or [])
    if method != "none" and n > 0:
        t0 = time.perf_counter()
        mono = x.mean(axis=0)
        segs, vad_backend = detect_speech(mono, sr, settings.vad, settings.vad_threshold, settings.min_speech_s,
                                          settings.min_silence_s)
        speech = _merge(segs, settings.pad_s, duration)
        timings["vad"] = (time.perf_counter() - t0) * 1000
        report["vad"] = vad_backend
        t0 = time.perf_counter()
        if method == "resynth":
            # one voice for everyone, so no diarization; muted words are never spoken (and silenced below too)
            out, found = resynthesize(mono, sr, settings, ranges, speech)
            y = np.repeat(out[None], x.shape[0], axis=0)
            turns = [(p.start, p.end, "synthetic") for p in found]
            report.update(speaker_backend="none (resynth)", phrases=len(found),
                          words_spoken=sum(len(p.text.split()) for p in found))
        else:
            turns, spk_backend = diarize(to_rate(mono, sr), speech, settings.speakers,
                                         threshold=settings.speaker_threshold, max_speakers=settings.max_speakers,
                                         pyannote_model=settings.pyannote_model)
            timings["speakers"] = (time.perf_counter() - t0) * 1000
            report["speaker_backend"] = spk_backend
            t0 = time.perf_counter()
            y = _transform_turns(x, sr, turns, method, settings, key, asset_id)
            if settings.nonspeech_gain_db != 0.0:
                y *= _speech_gain(n, sr, speech, settings.nonspeech_gain_db)[None]
        timings["transform"] = (time.perf_counter() - t0) * 1000
        # resynth always fixes the level (a synthetic voice has no recording level to keep)
        level = settings.speech_level_dbfs
        if method == "resynth" and level >= 0:
            level = DEFAULT_SPEECH_LEVEL_DBFS
        if level < 0:
            # resynth: the level of the synthesized frames only; over the phrase spans it would follow how much
            # of each span the speaker left silent (a speaker cue, RESULTS.md issue 21)
            gain = active_level_gain(y[0], sr, level) if method == "resynth" else _level_gain(y, sr, speech, level)
            y *= gain
            report["level_gain_db"] = round(20 * np.log10(max(gain, 1e-9)), 2)
    muted = apply_ranges(y, sr, ranges, settings.mute_mode, settings.beep_hz) if ranges else 0.0
    labels = sorted({t[2] for t in turns})
    report.update(speech_s=round(sum(b - a for a, b in speech), 3), speech_segments=len(speech),
                  speakers=len(labels), muted_s=round(muted, 3), mute_ranges=len(ranges), timings_ms=timings)
    return np.clip(y, -1.0, 1.0).astype(np.float32), report


def _transform_turns(x: np.ndarray, sr: int, turns: list[tuple[float, float, str]], method: str,
                     settings: AudioSettings, key: bytes | None, asset_id: str) -> np.ndarray:
    n = x.shape[1]
    fade = int(_FADE_S * sr)
    half = fade // 2
    spans = [(max(0, int(a * sr) - half), min(n, int(b * sr) + half), lab) for a, b, lab in turns]
    # source median F0 per speaker (WORLD targets are set relative to it)
    src_f0: dict[str, float] = {}
    if method == "world":
        per: dict[str, list[np.ndarray]] = {}
        mono = x.mean(axis=0)
        for i, j, lab in spans:
            if j - i > sr // 20:
                per.setdefault(lab, []).append(world_f0(mono[i:j], sr))
        src_f0 = {lab: median_f0(f) for lab, f in per.items()}
    seed = asset_seed()
    targets = {lab: draw_target(speaker_rng(lab, key, seed, settings.key_scope, asset_id), settings,
                                src_f0.get(lab, 0.0)) for lab in sorted({s[2] for s in spans})}
    num = np.zeros_like(x)
    den = np.zeros(n, np.float32)
    for i, j, lab in spans:
        if j - i < max(fade * 2, 64):
            continue
        for bi, bj in _blocks(j - i, sr):
            a, b = i + bi, i + bj
            w = _fade_window(b - a, fade, True, True)
            for c in range(x.shape[0]):
                num[c, a:b] += w * _transform(x[c, a:b], sr, method, targets[lab], src_f0.get(lab, 0.0))
            den[a:b] += w
    cover = np.minimum(den, 1.0)
    scale = np.where(den > 1.0, 1.0 / np.maximum(den, 1e-6), 1.0).astype(np.float32)
    return (num * scale[None] + x * (1.0 - cover)[None]).astype(np.float32)


def _level_gain(y: np.ndarray, sr: int, speech: list[tuple[float, float]], target_dbfs: float) -> float:
    """One gain for the whole asset that puts the speech RMS at target_dbfs (peaks kept below 0.99).

    The recording level is a linkage cue of its own: speech replaced by RMS-matched noise still let the d-vector
    attacker link utterances of one speaker (26 % EER, benchmarks/voice_privacy.py), at a fixed level it could not.
    """
    idx = np.concatenate([np.arange(int(a * sr), min(y.shape[1], int(b * sr))) for a, b in speech]) \
        if speech else np.zeros(0, int)
    if len(idx) < sr // 10:
        return 1.0
    rms = float(np.sqrt(np.mean(y[:, idx].astype(np.float64) ** 2)))
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if rms <= 1e-6:
        return 1.0
    gain = 10 ** (target_dbfs / 20.0) / rms
    return min(gain, 0.99 / peak) if peak > 0 else gain


def _speech_gain(n: int, sr: int, speech: list[tuple[float, float]], gain_db: float) -> np.ndarray:
    g = np.full(n, 10 ** (gain_db / 20.0), np.float32)
    for a, b in speech:
        g[int(a * sr): int(b * sr)] = 1.0
    k = max(1, int(_FADE_S * sr))
    return np.convolve(g, np.ones(k, np.float32) / k, mode="same").astype(np.float32)  # no clicks at the edges


def load_ranges(settings: AudioSettings) -> list[tuple[float, float]]:
    if not settings.mute_ranges_file:
        return []
    try:
        import fsspec

        with fsspec.open(settings.mute_ranges_file, "rt") as fh:
            text = fh.read()
        return parse_ranges(text, settings.mute_words)
    except (OSError, ValueError, KeyError) as exc:
        raise AudioConfigError(f"cannot read audio.mute_ranges_file: {exc}") from exc


def anonymize_audio(anonymizer, source: str | BinaryIO, out_path: str, media, rec,
                    deadline: Deadline | None = None) -> None:
    """Anonymize one audio file into out_path (same format, rate, channels, duration) and fill the audit record."""
    settings: AudioSettings = anonymizer.config.audio
    t = rec.timings_ms
    t0 = time.perf_counter()
    dec = audio_io.decode(source, media.format, settings.max_duration_s)
    t["decode"] = (time.perf_counter() - t0) * 1000
    rec.duration_s = dec.duration_s
    deadline = deadline or Deadline(0)
    deadline.check("audio decode")  # the stages below run in native code: the limit is checked between them
    key = load_key(settings)
    t0 = time.perf_counter()
    spoken = transcript_ranges(dec.samples, dec.sample_rate, settings)  # [] unless audio.asr_bleep
    if settings.asr_bleep:
        t["asr"] = (time.perf_counter() - t0) * 1000
        deadline.check("speech recognition")
    y, report = anonymize_waveform(dec.samples, dec.sample_rate, settings, key, asset_id=rec.input_sha256 or "",
                                   mute_ranges=load_ranges(settings) + spoken)
    report["bleeped_words"] = len(spoken)
    for k, v in report.pop("timings_ms").items():
        t[k] = v
    deadline.check("voice anonymization")
    t0 = time.perf_counter()
    audio_io.encode(y, dec, out_path, settings.bit_rate)
    t["encode"] = (time.perf_counter() - t0) * 1000
    # fail closed: the output must decode to the same rate, channels and duration (within one codec frame)
    t0 = time.perf_counter()
    check = audio_io.decode(out_path, dec.family)
    deadline.check("audio encode")
    t["verify"] = (time.perf_counter() - t0) * 1000
    if check.sample_rate != dec.sample_rate or check.samples.shape[0] != dec.samples.shape[0] or \
            abs(check.samples.shape[1] - dec.samples.shape[1]) > 2048:
        raise CorruptMedia(f"re-encoded audio does not match the input ({check.samples.shape[1]} vs "
                           f"{dec.samples.shape[1]} samples at {check.sample_rate} Hz)")
    report.update(codec_in=dec.codec, codec_out=check.codec)
    rec.extra["audio"] = report
    rec.metadata_removed = list(dec.tags)
    rec.detections = {"speaker": report["speakers"], "speech_segment": report["speech_segments"]}
    rec.masked = {"voice": report["speakers"] if report["method"] != "none" else 0}
