"""Voice transformations (numpy/scipy; WORLD through pyworld when installed).

- `mcadams`: the VoicePrivacy Challenge B2 baseline (Patino et al. 2021). Per 20 ms Hann frame (50 % overlap):
  LPC (autocorrelation, order 20 at 16 kHz), residual by inverse filtering, the angle phi of every complex pole
  moved to phi ** alpha (alpha < 1 pulls formants towards ~1 rad), re-synthesis from the residual, overlap-add.
- `world_convert`: WORLD analysis (DIO + StoneMask F0, CheapTrick envelope, D4C aperiodicity), F0 moved to a
  target median and its excursions rescaled, the envelope and aperiodicity frequency-warped (linear factor for
  formant position, then a McAdams-style power warp), WORLD synthesis. Pitch and timbre both move; a plain pitch
  shift leaves the envelope, which speaker-verification models mostly rely on.
- `pitch_shift`: plain pitch shift (phase-vocoder stretch + resampling; formants move with the pitch). A weak
  baseline kept for comparison only.

Every function keeps the input length exactly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import istft, lfilter, resample_poly, stft


@dataclass(frozen=True)
class VoiceTarget:
    """Where one speaker's voice is moved to (drawn per speaker; never written to the audit)."""

    f0_hz: float = 0.0  # target median F0 (0: keep the source's)
    f0_scale: float = 1.0  # rescaling of log-F0 excursions around the median (intonation range)
    formant: float = 1.0  # linear envelope warp factor (>1: formants up)
    mcadams: float = 1.0  # McAdams coefficient (1: identity)
    semitones: float = 0.0  # method pitch only
    eq: tuple[float, ...] = ()  # random smooth spectral-envelope curve: cosine-series amplitudes in dB
    warp: tuple[float, ...] = ()  # piecewise-linear frequency warp: knot displacements (fraction of the axis)
    drift: float = 0.0  # slow sinusoidal modulation of the formant factor (relative amplitude)
    drift_hz: float = 0.5
    drift_phase: float = 0.0
    flatten: float = 0.0  # fraction of the speaker's long-term envelope detail removed (0: off, 1: all)


# ---------------------------------------------------------------- LPC / McAdams


def _lpc(frame: np.ndarray, order: int) -> np.ndarray:
    r = np.correlate(frame, frame, mode="full")[len(frame) - 1: len(frame) + order]
    if r[0] <= 1e-10:
        return np.r_[1.0, np.zeros(order)]
    r = r.copy()
    r[0] *= 1.0 + 1e-6  # white-noise correction keeps the Toeplitz system well conditioned
    a = solve_toeplitz((r[:-1], r[:-1]), -r[1:])
    return np.r_[1.0, a]


def mcadams(x: np.ndarray, sr: int, alpha: float, win_s: float = 0.02, order: int | None = None) -> np.ndarray:
    """McAdams-coefficient anonymization of a mono signal (same length)."""
    x = np.asarray(x, np.float64)
    if alpha == 1.0 or len(x) == 0:
        return x.astype(np.float32)
    order = order or max(8, int(round(20 * sr / 16000)))
    win = int(round(win_s * sr)) // 2 * 2
    hop = win // 2
    w = np.hanning(win + 1)[:-1]  # periodic Hann: 50 % overlap-add sums to 1
    pad = np.pad(x, (win, win + hop))
    out = np.zeros_like(pad)
    for start in range(0, len(pad) - win, hop):
        frame = pad[start:start + win] * w
        if not np.any(frame):
            continue
        a = _lpc(frame, order)
        res = lfilter(a, [1.0], frame)
        poles = np.roots(a)
        cplx = np.abs(poles.imag) > 1e-8
        ang = np.angle(poles[cplx])
        new_ang = np.sign(ang) * np.abs(ang) ** alpha
        poles = poles.copy()
        poles[cplx] = np.abs(poles[cplx]) * np.exp(1j * new_ang)
        a_new = np.real(np.poly(poles))
        out[start:start + win] += lfilter([1.0], a_new, res)
    y = out[win:win + len(x)]
    return _match_rms(y, x)


def _match_rms(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    ry, rr = np.sqrt(np.mean(y**2) + 1e-12), np.sqrt(np.mean(ref**2) + 1e-12)
    y = y * (rr / ry)
    peak = np.max(np.abs(y)) if len(y) else 0.0
    if peak > 0.99:
        y = y * (0.99 / peak)
    return y.astype(np.float32)


# ---------------------------------------------------------------- WORLD


@lru_cache(maxsize=1)
def _pyworld():
    """The pyworld module, or None. pyworld 0.3.5's __init__ imports pkg_resources only to read its version and
    setuptools >= 81 no longer ships it: then load the compiled extension directly."""
    try:
        import pyworld

        return pyworld
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            return None
    spec = importlib.util.find_spec("pyworld")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    for name in sorted(os.listdir(folder)):
        if name.startswith("pyworld.") and name.endswith((".so", ".pyd")):
            ext = importlib.util.spec_from_file_location("pyworld.pyworld", os.path.join(folder, name))
            if ext is None or ext.loader is None:
                return None
            module = importlib.util.module_from_spec(ext)
            ext.loader.exec_module(module)
            return module
    return None


def world_available() -> bool:
    return _pyworld() is not None


@dataclass
class WorldAnalysis:
    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray
    n: int
    sr: int
    frame_period: float


def world_f0(x: np.ndarray, sr: int, frame_period: float = 5.0) -> np.ndarray:
    """F0 track only (DIO + StoneMask), for the source's median pitch."""
    pw = _pyworld()
    xd = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.dio(xd, sr, frame_period=frame_period, f0_floor=60.0, f0_ceil=500.0)
    return pw.stonemask(xd, f0, t, sr)


def world_analyze(x: np.ndarray, sr: int, frame_period: float = 5.0) -> WorldAnalysis:
    pw = _pyworld()

    xd = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.dio(xd, sr, frame_period=frame_period, f0_floor=60.0, f0_ceil=500.0)
    f0 = pw.stonemask(xd, f0, t, sr)
    sp = pw.cheaptrick(xd, f0, t, sr)
    ap = pw.d4c(xd, f0, t, sr)
    return WorldAnalysis(f0, sp, ap, len(x), sr, frame_period)


def median_f0(f0s: list[np.ndarray]) -> float:
    voiced = np.concatenate([f[f > 0] for f in f0s]) if f0s else np.zeros(0)
    return float(np.exp(np.median(np.log(voiced)))) if len(voiced) else 0.0


def warp_axis(n_bins: int, formant: float, alpha: float) -> np.ndarray:
    """Source bin (fractional) for each output bin: inverse of linear scaling then the McAdams power warp."""
    w_out = np.linspace(0.0, np.pi, n_bins)
    # McAdams on pole angles maps phi -> phi**alpha; its inverse gives the source angle of an output angle
    w_src = np.clip(w_out, 0, np.pi) ** (1.0 / alpha) if alpha != 1.0 else w_out
    w_src = np.clip(w_src / formant, 0.0, np.pi)
    return w_src / np.pi * (n_bins - 1)


def piecewise_warp(src_bins: np.ndarray, knots: tuple[float, ...]) -> np.ndarray:
    """Compose a random monotone piecewise-linear warp (on a mel-like axis) with the given source-bin map.

    Knot k sits at (k+1)/(K+1) of the axis and is displaced by knots[k] (kept below half a knot spacing, so the
    map stays monotone). Unlike one linear factor, every formant region moves by its own amount.
    """
    if not knots:
        return src_bins
    n_bins = len(src_bins)
    k = len(knots)
    grid = np.linspace(0.0, 1.0, k + 2)
    lim = 0.45 / (k + 1)
    moved = grid.copy()
    moved[1:-1] += np.clip(np.asarray(knots, np.float64), -lim, lim)
    to_m = np.log1p(np.linspace(0.0, 1.0, n_bins) * 20.0) / np.log1p(20.0)
    m_src = np.interp(to_m, moved, grid)  # output position -> source position on the mel-like axis
    hz_src = np.expm1(m_src * np.log1p(20.0)) / 20.0
    return np.interp(hz_src * (n_bins - 1), np.arange(n_bins), src_bins)


def eq_curve(n_bins: int, amps_db: tuple[float, ...]) -> np.ndarray:
    """Power gain per bin from a smooth random curve: sum_k a_k cos(k pi m) on a mel-like axis m in [0, 1]."""
    hz = np.linspace(0.0, 1.0, n_bins)
    m = np.log1p(hz * 20.0) / np.log1p(20.0)  # more resolution at low frequencies, where formants sit
    db = sum(a * np.cos((k + 1) * np.pi * m) for k, a in enumerate(amps_db))
    return 10.0 ** (np.asarray(db) / 10.0)


def _warp_bins(m: np.ndarray, src_bins: np.ndarray, log: bool) -> np.ndarray:
    """Resample every frame of m at fractional source bins (one map for all frames, or one per frame)."""
    idx = np.arange(m.shape[1])
    v = np.log(np.maximum(m, 1e-16)) if log else m
    out = np.empty_like(v)
    for i in range(v.shape[0]):
        out[i] = np.interp(src_bins[i] if src_bins.ndim == 2 else src_bins, idx, v[i])
    return np.exp(out) if log else out


def flatten_envelope(sp: np.ndarray, voiced: np.ndarray, amount: float, terms: int = 3) -> np.ndarray:
    """Remove `amount` of the long-term envelope detail: the mean log-envelope over voiced frames minus its smooth
    trend (a few cosine terms on a mel-like axis, i.e. the overall tilt). That detail is the average vocal-tract
    shape and channel of the speaker, a strong speaker-verification cue; the frame-to-frame changes that carry
    the phonemes stay."""
    if amount <= 0 or voiced.sum() < 10:
        return sp
    log_sp = np.log(np.maximum(sp, 1e-16))
    mean = log_sp[voiced].mean(axis=0)
    m = np.log1p(np.linspace(0.0, 1.0, sp.shape[1]) * 20.0) / np.log1p(20.0)
    basis = np.stack([np.cos(k * np.pi * m) for k in range(terms + 1)], axis=1)
    trend = basis @ np.linalg.lstsq(basis, mean, rcond=None)[0]
    return np.exp(log_sp - amount * (mean - trend)[None])


def world_convert(an: WorldAnalysis, target: VoiceTarget, src_median_f0: float) -> np.ndarray:
    pw = _pyworld()

    f0 = an.f0.copy()
    voiced = f0 > 0
    if voiced.any() and target.f0_hz > 0 and src_median_f0 > 0:
        lf = np.log(f0[voiced])
        lf = np.log(target.f0_hz) + (lf - np.log(src_median_f0)) * target.f0_scale
        f0[voiced] = np.exp(np.clip(lf, np.log(40.0), np.log(700.0)))
    n_bins = an.sp.shape[1]
    if target.drift > 0:
        # one source-bin map per frame: the formant factor wanders slowly around its drawn value
        t = np.arange(an.sp.shape[0]) * an.frame_period / 1000.0
        factors = target.formant * (1.0 + target.drift * np.sin(2 * np.pi * target.drift_hz * t
                                                                 + target.drift_phase))
        src_bins = np.stack([piecewise_warp(warp_axis(n_bins, f, target.mcadams), target.warp)
                             for f in factors])
    else:
        src_bins = piecewise_warp(warp_axis(n_bins, target.formant, target.mcadams), target.warp)
    sp = _warp_bins(flatten_envelope(an.sp, an.f0 > 0, target.flatten), src_bins, log=True)
    if target.eq:
        sp = sp * eq_curve(sp.shape[1], target.eq)[None]
    ap = np.clip(_warp_bins(an.ap, src_bins, log=False), 0.0, 1.0)
    y = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), an.sr, an.frame_period)
    y = fit_length(y, an.n)
    return y


def fit_length(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) >= n:
        return y[:n]
    return np.pad(y, (0, n - len(y)))


# ---------------------------------------------------------------- plain pitch shift (baseline)


def pitch_shift(x: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Shift pitch and formants together by `semitones`, keeping the length (stretch by r, resample by 1/r)."""
    x = np.asarray(x, np.float64)
    if semitones == 0 or len(x) == 0:
        return x.astype(np.float32)
    ratio = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(x, ratio)
    # resample by 1/ratio with a rational approximation (duration back to the input's, pitch up by ratio)
    num, den = _rational(1.0 / ratio)
    y = resample_poly(stretched, num, den)
    return _match_rms(fit_length(y, len(x)), x)


def _rational(v: float, max_den: int = 200) -> tuple[int, int]:
    from fractions import Fraction

    f = Fraction(v).limit_denominator(max_den)
    return f.numerator, f.denominator


def time_stretch(x: np.ndarray, rate: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Time-stretch by `rate` (>1 longer) with a phase vocoder (phase propagation per bin)."""
    _, _, z = stft(x, nperseg=n_fft, noverlap=n_fft - hop, boundary="zeros")
    n_frames = z.shape[1]
    steps = np.arange(0, n_frames - 1, 1.0 / rate)
    omega = 2 * np.pi * hop * np.arange(z.shape[0]) / n_fft
    phase = np.angle(z[:, 0])
    out = np.zeros((z.shape[0], len(steps)), complex)
    for i, s in enumerate(steps):
        k = int(s)
        frac = s - k
        mag = (1 - frac) * np.abs(z[:, k]) + frac * np.abs(z[:, k + 1])
        out[:, i] = mag * np.exp(1j * phase)
        dphi = np.angle(z[:, k + 1]) - np.angle(z[:, k]) - omega
        dphi -= 2 * np.pi * np.round(dphi / (2 * np.pi))
        phase = phase + omega + dphi
    _, y = istft(out, nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return y
