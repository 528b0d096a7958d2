"""WORLD conversion extras: piecewise frequency warp, slow formant drift, more envelope-curve terms (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.audio import AudioSettings, anonymize_waveform
from anon_core.audio.targets import draw_target
from anon_core.audio.voice import (
    VoiceTarget,
    median_f0,
    piecewise_warp,
    warp_axis,
    world_analyze,
    world_available,
    world_convert,
)
from tests.test_audio import SR, utterance, vowel

needs_world = pytest.mark.skipif(not world_available(), reason="pyworld not installed")


def _centroid(sp: np.ndarray, sr: int = SR) -> np.ndarray:
    """Per-frame centroid (Hz) of the log-envelope above its floor, 200-4000 Hz."""
    hz = np.linspace(0, sr / 2, sp.shape[1])
    band = (hz > 200) & (hz < 4000)
    le = np.log(np.maximum(sp[:, band], 1e-16))
    w = np.maximum(le - le.min(axis=1, keepdims=True), 0)
    return (w * hz[band]).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)


def _peak_hz(y: np.ndarray, lo: float, hi: float) -> float:
    sp = world_analyze(np.asarray(y, np.float64), SR).sp
    hz = np.linspace(0, SR / 2, sp.shape[1])
    band = (hz > lo) & (hz < hi)
    return float(hz[band][np.argmax(np.log(sp[:, band]).mean(axis=0))])


def test_piecewise_warp_identity_monotone_and_direction():
    base = warp_axis(513, 1.0, 1.0)
    assert np.allclose(piecewise_warp(base, ()), base)
    up = piecewise_warp(base, (0.05, 0.05, 0.05, 0.05))
    assert np.all(np.diff(up) >= -1e-9)  # monotone: no folded spectrum
    assert up[0] == pytest.approx(0.0) and up[-1] == pytest.approx(512.0)
    assert np.all(up[1:-1] <= base[1:-1] + 1e-9) and np.mean(base - up) > 5  # content comes from lower bins
    wild = piecewise_warp(base, (0.9, -0.9, 0.9, -0.9))  # clipped below half a knot spacing
    assert np.all(np.diff(wild) >= -1e-9)


@needs_world
def test_piecewise_warp_moves_formants_keeps_length_and_pitch():
    x = vowel(dur=1.2).astype(np.float64)
    an = world_analyze(x, SR)
    src = median_f0([an.f0])
    plain = world_convert(an, VoiceTarget(f0_hz=src, formant=1.0), src)
    warped = world_convert(an, VoiceTarget(f0_hz=src, formant=1.0, warp=(0.06, 0.06, 0.06, 0.06)), src)
    assert len(plain) == len(warped) == len(x)
    f1_plain, f1_warp = _peak_hz(plain, 400, 1200), _peak_hz(warped, 400, 1200)
    assert abs(f1_plain - 700) < 60  # the synthetic vowel's F1 survives plain re-synthesis
    assert f1_warp > 1.15 * f1_plain  # and moves up with positive knot displacements
    f0_out = median_f0([world_analyze(warped, SR).f0])
    assert abs(12 * np.log2(f0_out / src)) < 1.0  # pitch untouched by the envelope warp


@needs_world
def test_formant_drift_varies_envelope_over_time():
    x = vowel(dur=3.0, f0=130.0).astype(np.float64)
    an = world_analyze(x, SR)
    src = median_f0([an.f0])
    steady = world_convert(an, VoiceTarget(f0_hz=src, formant=1.2), src)
    drift = world_convert(an, VoiceTarget(f0_hz=src, formant=1.2, drift=0.2, drift_hz=0.5), src)
    assert len(drift) == len(x)
    voiced = world_analyze(steady, SR).f0 > 0
    s_steady = np.std(_centroid(world_analyze(steady, SR).sp)[voiced])
    s_drift = np.std(_centroid(world_analyze(drift, SR).sp)[voiced])
    assert s_drift > 1.5 * s_steady


def test_new_draws_keep_earlier_target_fields():
    """Keyed voices stay the same when the new options are switched on (their numbers are drawn last)."""
    base = AudioSettings(eq_terms=4)
    more = AudioSettings(warp_pieces=0.05, formant_drift=0.1, eq_terms=8)
    a = draw_target(np.random.default_rng(7), base, 120.0)
    b = draw_target(np.random.default_rng(7), more, 120.0)
    assert (a.f0_hz, a.formant, a.mcadams, a.f0_scale) == (b.f0_hz, b.formant, b.mcadams, b.f0_scale)
    assert b.eq[:4] == a.eq and len(b.eq) == 8 and len(b.warp) == 4 and b.drift == 0.1
    assert a.warp == () and a.drift == 0.0


def test_new_settings_validated():
    for bad in ({"eq_terms": 17}, {"warp_knots": 0}, {"warp_pieces": -0.1}, {"formant_drift": 0.6},
                {"drift_hz": [0.5, 0.1]}):
        with pytest.raises(ValueError):
            AudioSettings(**bad)


@needs_world
def test_default_world_deterministic_per_key_and_duration_kept():
    x = utterance()[None]
    s = AudioSettings(speakers="single", vad="energy")
    a1, _ = anonymize_waveform(x, SR, s, key=b"k1")
    a2, _ = anonymize_waveform(x, SR, s, key=b"k1")
    b, _ = anonymize_waveform(x, SR, s, key=b"k2")
    assert a1.shape == x.shape and np.array_equal(a1, a2)
    assert not np.allclose(a1, b, atol=1e-3)


def test_flatten_removes_long_term_detail_keeps_frame_changes():
    from anon_core.audio.voice import flatten_envelope

    bins = 257
    hz = np.linspace(0, 8000, bins)
    tilt = -hz / 2000.0
    bump = lambda fc, bw: 2.0 * np.exp(-0.5 * ((hz - fc) / bw) ** 2)  # noqa: E731
    speaker = bump(2800, 300)  # a fixed "vocal tract" peak present in every frame
    frames = np.stack([tilt + speaker + (bump(700, 120) if i % 2 else bump(400, 100)) for i in range(40)])
    sp = np.exp(frames)
    voiced = np.ones(40, bool)
    assert np.allclose(flatten_envelope(sp, voiced, 0.0), sp)
    out = np.log(flatten_envelope(sp, voiced, 1.0))
    i0, i1, i2 = (int(np.argmin(np.abs(hz - f))) for f in (2000, 2800, 3600))

    def prominence(m):  # height of the 2.8 kHz peak above the line through its surroundings
        return m[i1] - 0.5 * (m[i0] + m[i2])

    assert prominence(frames.mean(axis=0)) > 1.5
    assert prominence(out.mean(axis=0)) < 0.3  # the speaker's fixed peak is gone from the long-term mean
    assert np.allclose(out[1] - out[0], frames[1] - frames[0])  # phoneme-to-phoneme changes are untouched
    assert np.allclose(flatten_envelope(sp, np.zeros(40, bool), 1.0), sp)  # nothing voiced: left alone


def test_speech_level_normalisation_hides_the_input_level():
    """Two copies of one utterance recorded 12 dB apart come out at the same speech level."""
    x = utterance()
    s = AudioSettings(speakers="single", vad="energy", method="mcadams", speech_level_dbfs=-26.0)
    loud, rep = anonymize_waveform(x[None], SR, s, key=b"k")
    quiet, _ = anonymize_waveform((x * 0.25)[None], SR, s, key=b"k")
    speech = slice(SR + 1600, SR + 22400)

    def level(y):
        return 20 * np.log10(np.sqrt(np.mean(y[0, speech] ** 2)))

    assert abs(level(loud) - level(quiet)) < 0.5
    assert abs(level(loud) + 26.0) < 2.0 and "level_gain_db" in rep
    kept, rep0 = anonymize_waveform(x[None], SR, AudioSettings(speakers="single", vad="energy", method="mcadams",
                                                               speech_level_dbfs=0.0), key=b"k")
    assert "level_gain_db" not in rep0
    assert abs(level(kept) - 20 * np.log10(np.sqrt(np.mean(x[speech] ** 2)))) < 1.5  # 0: the input's level
