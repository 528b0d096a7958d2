"""Whisper front end, token decoding and weight integrity (anon_core/audio/asr.py)."""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.audio import asr

needs_wheels = pytest.mark.skipif(not asr.available(), reason="ctranslate2 / whisper weight wheels not installed")


def test_mel_filters_slaney_shape_and_centres():
    fb = asr.mel_filters()
    assert fb.shape == (80, 201) and fb.min() >= 0
    hz = np.linspace(0, 8000, 201)
    centres = hz[np.argmax(fb, axis=1)]
    assert np.all(np.diff(centres) >= 0)  # bands in increasing order
    # Slaney scale: 45.2 mel up to 8 kHz in 81 steps -> bands ~37 Hz apart below 1 kHz, much wider at the top
    assert np.mean(np.diff(centres[:20])) == pytest.approx(37.2, abs=6)
    assert np.mean(np.diff(centres[-10:])) > 200
    assert fb[5].max() > fb[70].max()  # area normalisation: wide bands weigh less per bin


def test_mel_filters_match_librosa():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)  # Slaney scale and norm by default
    assert np.allclose(asr.mel_filters(), ref, atol=1e-7)


def test_log_mel_shape_range_and_tone_lands_in_its_band():
    sr = 16000
    t = np.arange(sr * 2) / sr
    x = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    m = asr.log_mel(x)
    assert m.shape == (80, 3000) and m.dtype == np.float32
    assert m.max() <= (m.max() - 8 + 4) / 4 + 2 + 1e-6  # floored 8 decades (2.0 after scaling) below the max
    assert m.max() - m.min() <= 2.0 + 1e-5
    band = int(np.argmax(m[:, 10:190].mean(axis=1)))
    fb = asr.mel_filters()
    assert abs(np.linspace(0, 8000, 201)[np.argmax(fb[band])] - 1000) < 80
    assert np.allclose(m[:, 300:], m[:, 300:].min(), atol=1e-6)  # zero padding after 2 s: all at the floor


def test_decode_byte_level_tokens():
    vocab = ["H", "ello", "\u0120world", "\u0120caf", "\u00c3\u00a9", "!"] + [""] * 5
    assert asr.decode_tokens([0, 1, 2, 5], vocab) == "Hello world!"
    assert asr.decode_tokens([3, 4], vocab) == "café"  # two byte-level symbols -> one UTF-8 character
    big = vocab + [""] * (asr.FIRST_SPECIAL + 10 - len(vocab))
    big[asr.FIRST_SPECIAL + 1] = "<|en|>"
    assert asr.decode_tokens([asr.FIRST_SPECIAL + 1, 0], big) == "H"  # special tokens never become text


def test_normalize_for_wer():
    assert asr.normalize("There's iron, they say -- in ALL our blood.") == \
        ["there's", "iron", "they", "say", "in", "all", "our", "blood"]


def test_integrity_check_refuses_other_bytes():
    with pytest.raises(asr.AsrUnavailable):
        asr._checked("config.json", b"{}")
    size, _ = asr.PINNED["config.json"]
    with pytest.raises(asr.AsrUnavailable):
        asr._checked("config.json", b" " * size)  # right size, wrong content


def test_user_folder_must_hold_a_model(tmp_path):
    with pytest.raises(asr.AsrUnavailable):
        asr.load(str(tmp_path))


@needs_wheels
def test_packaged_weights_verify_and_recognise_nothing_in_silence():
    files = asr.packaged_files()
    assert len(files["model.bin"]) == asr.PINNED["model.bin"][0]
    model = asr.load(threads=1)
    vocab = model.vocab
    assert vocab[asr.FIRST_SPECIAL] == "<|endoftext|>" and vocab[220] == "\u0120"
    text = model.transcribe(np.zeros(16000 * 2, np.float32))
    assert isinstance(text, str) and len(text.split()) <= 3


def test_bleep_selects_names_and_numbers_with_padding():
    from anon_core.audio.bleep import select

    words = [(0.0, 0.4, "Call"), (0.4, 0.9, "Anna,"), (0.9, 1.2, "at"), (1.2, 1.8, "555"), (1.8, 2.3, "twenty"),
             (2.3, 2.9, "O'Brien.")]
    got = select(words, ["anna", "O'Brien"], numbers=False, duration=2.92)
    assert np.allclose(got, [(0.35, 0.95), (2.25, 2.92)])
    assert np.allclose(select(words, [], numbers=True, duration=3.0), [(1.15, 1.85), (1.75, 2.35)])
    assert select(words, [], numbers=False, duration=3.0) == []


def test_bleep_off_by_default_and_fails_closed_without_recogniser(monkeypatch):
    from anon_core.audio import bleep
    from anon_core.audio.settings import AudioSettings
    from anon_core.audio.speakers import AudioConfigError

    x = np.zeros((1, 16000), np.float32)
    assert bleep.transcript_ranges(x, 16000, AudioSettings()) == []
    monkeypatch.setattr(asr, "available", lambda: False)
    with pytest.raises(AudioConfigError):
        bleep.transcript_ranges(x, 16000, AudioSettings(asr_bleep=True))


@needs_wheels
def test_word_times_lie_inside_the_audio():
    model = asr.load(threads=1)
    sr = 16000
    t = np.arange(sr * 3) / sr
    x = (0.2 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    for a, b, w in model.words(x):
        assert 0.0 <= a <= b <= 3.0 and w
