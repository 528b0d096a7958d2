"""Per-speaker voice targets: random per asset, or derived from a secret key.

- No key: one fresh OS-random seed per asset; each speaker in the asset gets its own draw, so a speaker sounds
  the same throughout the asset and different in every other asset (linkage across assets is broken).
- Key: the draw is seeded by HMAC-SHA256(key, scope | speaker id). The same key and speaker id give the same
  voice in every asset (useful for a corpus where a speaker must stay recognisable as "the same person"); with
  key_scope=asset the input's hash is mixed in, which makes the output reproducible per asset yet unlinkable.

The key never leaves this module: not in the audit, not in the config, not in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np

from anon_core.audio.settings import AudioSettings
from anon_core.audio.voice import VoiceTarget


def load_key(settings: AudioSettings) -> bytes | None:
    value = os.environ.get(settings.key_env, "") if settings.key_env else ""
    return value.encode() if value else None


def asset_seed() -> bytes:
    return os.urandom(32)


def speaker_rng(speaker: str, key: bytes | None, asset_seed_bytes: bytes, scope: str = "speaker",
                asset_id: str = "") -> np.random.Generator:
    if key:
        msg = ("anon-voice-v1|" + (asset_id + "|" if scope == "asset" else "") + speaker).encode()
        digest = hmac.new(key, msg, hashlib.sha256).digest()
    else:
        digest = hashlib.sha256(asset_seed_bytes + b"|" + speaker.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def draw_target(rng: np.random.Generator, settings: AudioSettings, src_f0: float) -> VoiceTarget:
    """A target voice at least `min_shift_semitones` away from the source's median F0.

    All numbers are drawn first (the same count whatever the source), so a keyed draw stays stable when the
    measured source F0 varies slightly between assets of the same speaker.
    """
    lo, hi = settings.f0_range_hz
    u_f0, u_dir, u_scale, u_formant, u_mca = rng.random(5)
    u_eq = rng.uniform(-1.0, 1.0, 4)
    target = float(np.exp(np.log(lo) + u_f0 * (np.log(hi) - np.log(lo))))
    if src_f0 > 0:
        min_ratio = 2.0 ** (settings.min_shift_semitones / 12.0)
        if target / src_f0 < min_ratio and src_f0 / target < min_ratio:
            up = src_f0 * min_ratio <= hi * 1.25
            down = src_f0 / min_ratio >= lo / 1.25
            go_up = (u_dir < 0.5 and up) or not down
            target = src_f0 * min_ratio if go_up else src_f0 / min_ratio
    direction_up = target >= src_f0 if src_f0 > 0 else u_dir < 0.5
    f_lo, f_hi = settings.formant_range
    formant = f_lo + u_formant * (f_hi - f_lo)
    if not direction_up:
        formant = 1.0 / formant
    m_lo, m_hi = settings.mcadams_range
    # later additions are drawn after the original ones, so earlier keyed voices keep their values
    u_eq_more = rng.uniform(-1.0, 1.0, 12)
    u_warp = rng.uniform(-1.0, 1.0, 8)
    u_drift = rng.random(2)
    eq = np.r_[u_eq, u_eq_more][:settings.eq_terms] * settings.eq_db
    d_lo, d_hi = settings.drift_hz
    return VoiceTarget(
        f0_hz=target,
        f0_scale=float(0.7 + 0.6 * u_scale),
        formant=float(formant),
        mcadams=float(m_lo + u_mca * (m_hi - m_lo)),
        semitones=float(settings.pitch_semitones),
        eq=tuple(float(v) for v in eq),
        warp=tuple(float(v) for v in u_warp[:settings.warp_knots] * settings.warp_pieces)
        if settings.warp_pieces > 0 else (),
        drift=float(settings.formant_drift),
        drift_hz=float(d_lo + u_drift[0] * (d_hi - d_lo)),
        drift_phase=float(2 * np.pi * u_drift[1]),
        flatten=float(settings.envelope_flatten),
    )
