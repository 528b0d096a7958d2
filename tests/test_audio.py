"""Audio anonymization: codecs, VAD, voice transforms, keyed targets, mute ranges, audit, end to end.

Generated signals only (a pulse train through formant resonators stands in for a vowel); no ../shared data.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.signal import lfilter

from anon_core.audio import AudioSettings, anonymize_waveform
from anon_core.audio import io as aio
from anon_core.audio.ranges import parse_ranges
from anon_core.audio.vad import detect_speech, silero_model_path
from anon_core.audio.voice import mcadams, world_available

SR = 16000
FRAME_SLACK = {"wav": 0, "flac": 0, "mp3": 1152, "ogg": 960, "m4a": 1024}


def vowel(sr: int = SR, dur: float = 1.5, f0: float = 120.0, formants=(700, 1220, 2600), seed: int = 0) -> np.ndarray:
    """A crude voiced signal: glottal pulses with vibrato through three formant resonators, syllable envelope."""
    rng = np.random.default_rng(seed)
    n = int(sr * dur)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t)) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    pulses = (np.diff(np.floor(np.cumsum(f) / sr), prepend=0) > 0).astype(float)
    y = lfilter([1], [1, -0.97], pulses) + 0.02 * rng.standard_normal(n)
    for fc, bw in zip(formants, (80, 100, 150)):
        r, th = np.exp(-np.pi * bw / sr), 2 * np.pi * fc / sr
        y = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], y)
    y *= 0.3 + 0.7 * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


def utterance(sr: int = SR, seed: int = 0) -> np.ndarray:
    """1 s silence, 1.5 s voiced, 1 s silence (with a faint noise floor)."""
    rng = np.random.default_rng(seed + 100)
    x = np.concatenate([np.zeros(sr), vowel(sr, 1.5, seed=seed), np.zeros(sr)]).astype(np.float32)
    return x + (1e-4 * rng.standard_normal(len(x))).astype(np.float32)


def write(path, x: np.ndarray, sr: int, family: str, codec: str) -> None:
    x2 = x[None] if x.ndim == 1 else x
    layout = "mono" if x2.shape[0] == 1 else "stereo"
    fmt = "s16" if codec in ("pcm_s16le", "flac") else "fltp"
    aio.encode(x2, aio.DecodedAudio(x2, sr, family, codec, layout, 0, fmt), str(path))


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = np.abs(np.fft.rfft(a)), np.abs(np.fft.rfft(b))
    return float(np.mean(np.abs(np.log(sa + 1e-6) - np.log(sb + 1e-6))))


FORMATS = [("wav", "pcm_s16le", 16000, 1), ("flac", "flac", 22050, 2), ("mp3", "mp3", 44100, 1),
           ("ogg", "opus", 48000, 1), ("m4a", "aac", 24000, 2)]


@pytest.mark.parametrize("family,codec,sr,channels", FORMATS)
def test_format_round_trip_keeps_rate_channels_duration(tmp_path, family, codec, sr, channels):
    x = np.stack([utterance(sr)] * channels)
    src = tmp_path / f"in.{family}"
    write(src, x, sr, family, codec)
    dec = aio.decode(str(src))
    assert dec.family == family and dec.sample_rate == sr and dec.samples.shape[0] == channels
    out = tmp_path / f"out.{family}"
    y, _ = anonymize_waveform(dec.samples, dec.sample_rate, AudioSettings(method="mcadams", speakers="single"))
    aio.encode(y, dec, str(out))
    back = aio.decode(str(out))
    assert back.sample_rate == sr and back.samples.shape[0] == channels
    assert abs(back.samples.shape[1] - dec.samples.shape[1]) <= FRAME_SLACK[family]


def test_ogg_vorbis_like_rate_falls_back_to_lossless(tmp_path):
    """Ogg at a rate Opus cannot code (44.1 kHz) is written as FLAC-in-Ogg: same container, rate, duration."""
    x = utterance(44100)[None]
    dec = aio.DecodedAudio(x, 44100, "ogg", "vorbis", "mono", 0, "fltp")
    aio.encode(x, dec, str(tmp_path / "o.ogg"))
    back = aio.decode(str(tmp_path / "o.ogg"))
    assert back.sample_rate == 44100 and back.samples.shape[1] == x.shape[1] and back.codec == "flac"


@pytest.mark.parametrize("backend", ["silero", "webrtc", "energy"])
def test_vad_finds_voiced_segment_not_silence(backend):
    if backend == "silero" and silero_model_path() is None:
        pytest.skip("silero-vad not installed")
    if backend == "webrtc":
        pytest.importorskip("webrtcvad")
    segs, used = detect_speech(utterance(), SR, backend)
    assert used == backend and segs
    assert all(0.85 <= a and b <= 2.7 for a, b in segs)  # nothing in the leading/trailing silence
    assert min(a for a, _ in segs) < 1.2


def test_vad_silence_only_is_empty():
    segs, _ = detect_speech(np.zeros(SR * 2, np.float32), SR, "auto")
    assert segs == []


@pytest.mark.parametrize("method", ["mcadams", "world", "pitch"])
def test_method_changes_spectrum_keeps_duration(method):
    if method == "world" and not world_available():
        pytest.skip("pyworld not installed")
    x = utterance()
    y, rep = anonymize_waveform(x[None], SR, AudioSettings(method=method, speakers="single", vad="energy"))
    assert y.shape == (1, len(x)) and rep["method"] == method
    speech = slice(SR + 1600, SR + 22400)
    assert spectrum_distance(x[speech], y[0, speech]) > 0.3
    assert np.max(np.abs(y[0, : SR // 2])) < 1e-2  # leading silence untouched (not speech)


def test_mcadams_identity_and_length():
    x = vowel()
    assert np.allclose(mcadams(x, SR, 1.0), x)
    assert len(mcadams(x, SR, 0.8)) == len(x)


def test_keyed_targets_deterministic_per_key_and_speaker():
    x = utterance()[None]
    s = AudioSettings(speakers="single", vad="energy", method="world" if world_available() else "mcadams")
    a1, _ = anonymize_waveform(x, SR, s, key=b"secret-1")
    a2, _ = anonymize_waveform(x, SR, s, key=b"secret-1")
    b, _ = anonymize_waveform(x, SR, s, key=b"secret-2")
    r1, _ = anonymize_waveform(x, SR, s)  # no key: random per asset
    r2, _ = anonymize_waveform(x, SR, s)
    assert np.array_equal(a1, a2)
    assert not np.allclose(a1, b, atol=1e-3)
    assert not np.allclose(r1, r2, atol=1e-3)


def test_keyed_asset_scope_differs_between_assets():
    x = utterance()[None]
    s = AudioSettings(speakers="single", vad="energy", method="mcadams", key_scope="asset")
    a, _ = anonymize_waveform(x, SR, s, key=b"k", asset_id="sha-a")
    a2, _ = anonymize_waveform(x, SR, s, key=b"k", asset_id="sha-a")
    b, _ = anonymize_waveform(x, SR, s, key=b"k", asset_id="sha-b")
    assert np.array_equal(a, a2) and not np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("mode", ["silence", "beep"])
def test_mute_ranges(mode):
    x = utterance()[None]
    s = AudioSettings(speakers="single", vad="energy", method="mcadams", mute_ranges=[[1.2, 1.6]], mute_mode=mode)
    y, rep = anonymize_waveform(x, SR, s, mute_ranges=[(2.0, 2.1)])
    seg, seg2 = y[0, int(1.2 * SR): int(1.6 * SR)], y[0, int(2.0 * SR): int(2.1 * SR)]
    if mode == "silence":
        assert not seg.any() and not seg2.any()
    else:  # a pure tone: all energy at beep_hz
        spec = np.abs(np.fft.rfft(seg))
        assert abs(np.argmax(spec) * SR / len(seg) - 1000) < 10
    assert rep["muted_s"] == pytest.approx(0.5, abs=0.01)


def test_parse_ranges_formats():
    assert parse_ranges("1.0 2.0\n# c\n00:00:03.5,00:00:04") == [(1.0, 2.0), (3.5, 4.0)]
    assert parse_ranges("[[0, 1.5]]") == [(0.0, 1.5)]
    words = '{"start": 1, "end": 1.4, "word": "Alice,"}\n{"start": 2, "end": 2.3, "word": "went"}'
    assert parse_ranges(words, ["alice"]) == [(1.0, 1.4)]
    with pytest.raises(ValueError):
        parse_ranges("3 1")


def test_nonspeech_attenuation():
    x = utterance()[None] + 0.01
    s = AudioSettings(speakers="single", vad="energy", method="mcadams", nonspeech_gain_db=-40)
    y, _ = anonymize_waveform(x, SR, s)
    assert np.max(np.abs(y[0, : SR // 2])) < 0.01 * 0.02


def test_settings_validation():
    with pytest.raises(ValueError):
        AudioSettings(method="nope")
    with pytest.raises(ValueError):
        AudioSettings(mute_ranges=[[2, 1]])


def _run(tmp_path, files: dict[str, bytes], monkeypatch, **audio):
    from anon_core.config import AnonConfig
    from anon_core.runner import run

    monkeypatch.setenv("ANON_VOICE_KEY", "top-secret-voice-key")
    src = tmp_path / "in"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    cfg = AnonConfig()
    cfg.audio = AudioSettings(**{"speakers": "single", **audio})
    summary = run(str(src), str(tmp_path / "out"), cfg, progress=False)
    table = pq.read_table(next((tmp_path / "out" / "_manifests").glob("*.parquet"))).to_pylist()
    return summary, {r["relative_path"]: r for r in table}


def test_end_to_end_wav_and_corrupt(tmp_path, monkeypatch):
    wav = tmp_path / "speech.wav"
    write(wav, utterance(), SR, "wav", "pcm_s16le")
    good = wav.read_bytes()
    corrupt = good[:44] + b"\x00" * 10  # header says more data than there is... then truncated garbage
    bad_flac = b"fLaC" + b"\x00\x01garbage" * 20
    summary, rows = _run(tmp_path, {"speech.wav": good, "broken.flac": bad_flac, "short.wav": corrupt},
                         monkeypatch)
    row = rows["speech.wav"]
    assert row["status"] == "ok" and row["media_type"] == "audio" and row["format"] == "wav"
    out = tmp_path / "out" / "speech.wav"
    back = aio.decode(str(out))
    assert back.sample_rate == SR and back.samples.shape[1] == len(utterance())
    assert row["duration_s"] == pytest.approx(3.5, abs=1e-3)
    extra = json.loads(row["extra_json"])["audio"]
    assert extra["speech_s"] > 1.0 and extra["speakers"] == 1 and extra["keyed"] is True
    assert "method" in extra and "params" in extra
    # the key is never written anywhere in the audit
    blob = json.dumps(rows, default=str)
    assert "top-secret-voice-key" not in blob
    assert rows["broken.flac"]["status"] == "failed" and not (tmp_path / "out" / "broken.flac").exists()
    assert rows["broken.flac"]["error_code"] in ("corrupt", "unsupported")
    assert rows["short.wav"]["status"] == "failed" and not (tmp_path / "out" / "short.wav").exists()
    assert summary.failed == 2


def test_end_to_end_keeps_mp3_format(tmp_path, monkeypatch):
    mp3 = tmp_path / "a.mp3"
    write(mp3, utterance(44100), 44100, "mp3", "mp3")
    _, rows = _run(tmp_path, {"a.mp3": mp3.read_bytes()}, monkeypatch, method="mcadams")
    assert rows["a.mp3"]["status"] == "ok"
    back = aio.decode(str(tmp_path / "out" / "a.mp3"))
    assert back.family == "mp3" and back.sample_rate == 44100


def test_config_from_dict_audio():
    from anon_core.config import AnonConfig

    cfg = AnonConfig.from_dict({"audio": {"method": "mcadams", "mute_ranges": [[1, 2]]}})
    assert cfg.audio.method == "mcadams" and cfg.audio.mute_ranges == [[1.0, 2.0]]
    assert AnonConfig().audio.anonymize_video_audio is False
