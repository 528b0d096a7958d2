"""Speech re-synthesis (audio.method=resynth): phrases, fitting, a real Whisper + eSpeak NG round trip, fail closed.

The input speech is itself made by eSpeak NG (another voice, pitch and rate), so no ../shared data is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from anon_core.audio import AudioSettings, anonymize_waveform, asr, resynth, tts
from anon_core.audio.speakers import AudioConfigError

SR = 16000
needs_both = pytest.mark.skipif(not (asr.available() and tts.available()),
                                reason="whisper wheels / espeakng-loader not installed")
needs_tts = pytest.mark.skipif(not tts.available(), reason="espeakng-loader not installed")
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def test_phrases_split_at_pauses_and_drop_muted_words():
    words = [(0.0, 0.3, "Call"), (0.3, 0.8, "Anna"), (0.8, 1.0, "now."), (2.0, 2.4, "Then"), (2.4, 2.9, "go.")]
    got = resynth.phrases(words)
    assert [(p.start, p.end, p.text) for p in got] == [(0.0, 1.0, "Call Anna now."), (2.0, 2.9, "Then go.")]
    muted = resynth.phrases(words, mute=[(0.35, 0.75)])
    assert [p.text for p in muted] == ["Call", "now.", "Then go."]  # the muted word is never spoken


@needs_tts
def test_fit_phrase_is_exactly_the_span():
    eng = tts.engine()
    for n in (eng.sample_rate // 2, 3 * eng.sample_rate):
        y = resynth.fit_phrase(eng, SENTENCE, n, "en-us")
        assert len(y) == n and np.max(np.abs(y)) > 0.05


@needs_tts
def test_fixed_rate_phrase_never_runs_into_the_next_one():
    eng = tts.engine()
    free = resynth.fixed_rate_phrase(eng, SENTENCE, 10 * eng.sample_rate, "en-us", 175)
    assert 1.5 * eng.sample_rate < len(free) < 10 * eng.sample_rate  # its own length at 175 wpm
    tight = resynth.fixed_rate_phrase(eng, SENTENCE, eng.sample_rate, "en-us", 175)
    assert len(tight) == eng.sample_rate  # compressed into the room before the next phrase


def _speech_input() -> np.ndarray:
    """0.8 s silence, the sentence in a higher eSpeak NG voice at another rate, 1 s silence; at 16 kHz."""
    eng = tts.engine()
    y = eng.say(SENTENCE, "en-us+f3", rate_wpm=140, pitch=70)
    g = np.gcd(eng.sample_rate, SR)
    y = resample_poly(y, SR // g, eng.sample_rate // g).astype(np.float32) * 0.5
    return np.concatenate([np.zeros(int(0.8 * SR), np.float32), y, np.zeros(SR, np.float32)])


@needs_both
def test_round_trip_keeps_duration_fixes_level_and_words():
    x = _speech_input()
    st = AudioSettings(method="resynth", speakers="single")
    y, rep = anonymize_waveform(np.stack([x, 0.3 * x]), SR, st)  # stereo: both channels get the one voice
    assert y.shape == (2, len(x)) and np.array_equal(y[0], y[1])
    assert rep["method"] == "resynth" and rep["phrases"] >= 1 and rep["words_spoken"] >= 8
    assert not np.any(y[0][: int(0.3 * SR)])  # before the first word: silence, nothing of the input
    voiced = y[0][np.abs(y[0]) > 0]
    level = 20 * np.log10(np.sqrt(np.mean(y[0][int(0.6 * SR): -int(0.8 * SR)] ** 2)))
    assert len(voiced) and abs(level - st.speech_level_dbfs) < 3.0  # the fixed level, whatever the input's
    ref = set(asr.normalize(SENTENCE))
    heard = set(asr.normalize(asr.load(threads=1).transcribe(y[0])))
    assert len(ref & heard) >= 0.6 * len(ref)  # still intelligible
    y2, _ = anonymize_waveform(x[None] * 0.1, SR, st)  # a quieter recording comes out at the same level
    assert abs(20 * np.log10(np.sqrt(np.mean(y2 ** 2)) / np.sqrt(np.mean(y[0] ** 2)))) < 1.5


def test_fails_closed_without_recogniser_or_synthesizer(monkeypatch):
    x = np.random.default_rng(0).standard_normal((1, SR)).astype(np.float32) * 0.1
    st = AudioSettings(method="resynth", speakers="single", vad="energy")

    def broken():
        raise tts.TtsUnavailable("gone")

    monkeypatch.setattr(tts, "engine", broken)
    with pytest.raises(AudioConfigError, match="eSpeak"):
        anonymize_waveform(x, SR, st)
    monkeypatch.undo()
    monkeypatch.setattr(asr, "available", lambda: False)
    if tts.available():
        with pytest.raises(AudioConfigError, match="Whisper"):
            anonymize_waveform(x, SR, st)
