"""Voice anonymization of the audio tracks of videos (audio.anonymize_video_audio): changed voice, same format,
same duration, in sync with the video; the picture's frames and timestamps untouched; fail closed.

(Bit-exact audio with the flag off is covered by tests/test_video.py.)
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from anon_core.audio.voice import world_available
from anon_core.config import AnonConfig
from anon_core.pipeline import Anonymizer
from tests.video_helpers import AUDIO_CODEC, MUXER, VIDEO_CODEC, background, face_patch, read_video, run_video

FAST_FACE = {"face": {"name": "face", "params": {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}}
SR = 48000
FPS = 24
FRAME = {"mp4": 1024, "mkv": 1024, "webm": 960, "mov": 1024}  # one codec frame (AAC 1024 samples, Opus 20 ms)


def voice(n: int, sr: int = SR, f0: float = 120.0) -> np.ndarray:
    """Voiced-like: harmonic series on a 120 Hz fundamental with vibrato, formant-ish weights, syllable AM;
    0.3 s of near-silence at both ends (the energy VAD needs a noise floor)."""
    t = np.arange(n) / sr
    f = f0 * (1 + 0.04 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    y = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        w = sum(np.exp(-((fk - fc) / 250.0) ** 2) for fc in (700, 1200, 2600)) + 0.3 / k
        y += w * np.sin(k * phase)
    y *= 0.3 + 0.7 * (0.5 - 0.5 * np.cos(2 * np.pi * 3 * t))
    y[(t < 0.3) | (t > t[-1] - 0.3)] = 0.0
    rng = np.random.default_rng(0)
    y = 0.3 * y / np.max(np.abs(y)) + 1e-3 * rng.standard_normal(n)
    return y.astype(np.float32)


def make_voice_clip(path: str, fmt: str, channels: int = 1, audio_offset_s: float = 0.0, seconds: float = 2.0,
                    size: tuple[int, int] = (160, 120), audio_codec: str = "") -> None:
    w, h = size
    bg, patch = background(w, h), face_patch(48)
    oc = av.open(path, mode="w", format=MUXER[fmt])
    vs = oc.add_stream(VIDEO_CODEC[fmt], rate=FPS, options={"crf": "23"} if fmt != "webm" else
                       {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"})
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.codec_context.time_base = Fraction(1, FPS)
    aus = oc.add_stream(audio_codec or AUDIO_CODEC[fmt], rate=SR)
    aus.layout = "mono" if channels == 1 else "stereo"
    oc.start_encoding()
    n_frames = int(seconds * FPS)
    for i in range(n_frames):
        img = bg.copy()
        x = 5 + (w - 58) * i // max(n_frames - 1, 1)
        img[36:84, x:x + 48] = patch
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        for p in vs.encode(frame):
            oc.mux(p)
    for p in vs.encode(None):
        oc.mux(p)
    n = int((seconds - audio_offset_s) * SR)
    x = voice(n)
    sig = np.stack([x, 0.8 * x])[:channels] if channels > 1 else x[None]
    fsize = aus.codec_context.frame_size or 1024
    start = int(round(audio_offset_s * SR))
    for k in range(0, n, fsize):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(sig[:, k:k + fsize]), format="fltp", layout=aus.layout)
        af.sample_rate, af.pts, af.time_base = SR, start + k, Fraction(1, SR)
        for p in aus.encode(af):
            oc.mux(p)
    for p in aus.encode(None):
        oc.mux(p)
    oc.close()


def read_audio(path: str) -> tuple[np.ndarray, int, float, str]:
    """(channels, n) float32, sample rate, first sample's time (s), codec."""
    chunks, first = [], None
    with av.open(path) as c:
        s = c.streams.audio[0]
        codec = s.codec_context.name
        for f in c.decode(s):
            if first is None:
                first = float(f.pts * f.time_base)
            sr = f.sample_rate
            chunks.append(f.to_ndarray().reshape(f.layout.nb_channels, -1) if f.format.is_planar
                          else f.to_ndarray().reshape(-1, f.layout.nb_channels).T)
    return np.concatenate(chunks, axis=1).astype(np.float32), sr, first, codec


def f0_peak(x: np.ndarray, sr: int) -> float:
    """Strongest spectral peak between 60 and 400 Hz (the fundamental of the voiced signal)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    band = (freqs > 60) & (freqs < 400)
    return float(freqs[band][np.argmax(spec[band])])


def envelope_lag_s(a: np.ndarray, t_a: float, b: np.ndarray, t_b: float, sr: int, max_lag_ms: int = 100) -> float:
    """Lag of b's loudness envelope against a's on the common (video) clock, in seconds (1 ms resolution)."""
    def env(x: np.ndarray, t0: float) -> np.ndarray:
        hop = sr // 1000
        e = np.abs(x[: len(x) // hop * hop]).reshape(-1, hop).mean(axis=1)
        e = np.convolve(e, np.ones(20) / 20, mode="same")  # 20 ms smoothing: follows syllables, not pitch
        return np.concatenate([np.zeros(int(round(t0 * 1000))), e])

    ea, eb = env(a, t_a), env(b, t_b)
    n = min(len(ea), len(eb)) - max_lag_ms
    lags = range(-max_lag_ms, max_lag_ms + 1)
    scores = [np.dot(ea[max_lag_ms:n], eb[max_lag_ms + k:n + k]) for k in lags]
    return lags[int(np.argmax(scores))] / 1000.0


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    sa, sb = np.abs(np.fft.rfft(a[:n])), np.abs(np.fft.rfft(b[:n]))
    return float(np.mean(np.abs(np.log(sa + 1e-6) - np.log(sb + 1e-6))))


def _anonymizer(**audio) -> Anonymizer:
    settings = {"anonymize_video_audio": True, "vad": "energy", "speakers": "single",
                "method": "world" if world_available() else "mcadams", **audio}
    return Anonymizer(AnonConfig.from_dict({"policy": "faces", "detectors": FAST_FACE, "audio": settings}))


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return _anonymizer()


_run = run_video


@pytest.mark.parametrize("fmt,channels,offset,codec", [("mp4", 2, 0.25, ""), ("webm", 1, 0.0, ""),
                                                       ("mkv", 1, 0.0, ""), ("mov", 1, 0.0, "pcm_s16le")])
def test_video_audio_voice_anonymized_in_sync(anonymizer, tmp_path, fmt, channels, offset, codec, monkeypatch):
    monkeypatch.setenv("ANON_VOICE_KEY", "s3cret-voice-key")
    src = str(tmp_path / f"in.{fmt}")
    make_voice_clip(src, fmt, channels, offset, audio_codec=codec)
    out, rec = _run(anonymizer, src, fmt, tmp_path)

    # picture: same frames at the same times
    fi, ti, _ = read_video(src)
    fo, to, _ = read_video(out)
    assert len(fo) == len(fi) == 48
    assert np.allclose(ti, to, atol=1e-3)

    xi, sri, t_in, codec_in = read_audio(src)
    xo, sro, t_out, codec_out = read_audio(out)
    assert (sro, xo.shape[0], codec_out) == (sri, xi.shape[0], codec_in)
    frame = FRAME[fmt]
    assert abs(xo.shape[1] - xi.shape[1]) <= frame, (xo.shape, xi.shape)
    assert abs(t_out - t_in) <= frame / sri + 1e-3, (t_in, t_out)  # in sync with the video within one frame
    assert abs(t_in - offset) <= frame / sri + 1e-3
    # the content itself is in sync (syllable envelope on the video clock), not only the first timestamp
    assert abs(envelope_lag_s(xi.mean(axis=0), t_in, xo.mean(axis=0), t_out, sri)) <= frame / sri
    # the voice changed: fundamental moved by more than 2 semitones, spectrum clearly different
    mi, mo = xi.mean(axis=0), xo.mean(axis=0)
    p_in, p_out = f0_peak(mi, sri), f0_peak(mo, sro)
    assert abs(p_in - 120) < 10
    assert abs(12 * np.log2(p_out / p_in)) > 2, (p_in, p_out)
    assert spectrum_distance(mi, mo) > 0.5

    audit = rec.extra["audio"]
    assert audit["speech_s"] > 0.5 and audit["speakers"] == 1 and audit["method"] in ("world", "mcadams")
    assert audit["keyed"] is True and "params" in audit and audit["codec_out"]
    assert "s3cret-voice-key" not in json.dumps(rec.extra)  # also: the audit stays JSON
    assert any(s.get("voice_anonymized") for s in rec.extra["streams_copied"])
    assert rec.frames == 48


def test_video_audio_failure_fails_the_asset(anonymizer, tmp_path, monkeypatch):
    import anon_core.audio.anonymize as aa

    def boom(*a, **k):
        raise RuntimeError("voice model crashed")

    monkeypatch.setattr(aa, "anonymize_waveform", boom)
    src = str(tmp_path / "in.mp4")
    make_voice_clip(src, "mp4", seconds=1.0)
    with pytest.raises(RuntimeError, match="voice model crashed"):
        _run(anonymizer, src, "mp4", tmp_path)


def test_video_audio_too_long_is_refused(tmp_path):
    from anon_core.media.errors import TooLarge

    an = _anonymizer(max_duration_s=0.5)
    src = str(tmp_path / "in.mkv")
    make_voice_clip(src, "mkv", seconds=1.0)
    with pytest.raises(TooLarge):
        _run(an, src, "mkv", tmp_path)
