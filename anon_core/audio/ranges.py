"""Mute or beep time ranges (spoken names, numbers): from config and from a ranges/transcript file.

File formats (one item per line, `#` comments allowed):
- `start end` or `start,end` or `start<TAB>end[<TAB>label]` in seconds, or `HH:MM:SS.mmm` times;
- a JSON list `[[start, end], ...]` or JSON lines `{"start": s, "end": e, ...}`;
- a word-level transcript (JSON lines with `start`, `end` and `word`/`text`) together with `words` to mute:
  every listed word (case-insensitive, punctuation stripped) is muted.
"""

from __future__ import annotations

import json
import re

import numpy as np


def _time(v: str | float | int) -> float:
    if isinstance(v, int | float):
        return float(v)
    v = v.strip()
    if ":" in v:
        parts = [float(p) for p in v.split(":")]
        out = 0.0
        for p in parts:
            out = out * 60 + p
        return out
    return float(v)


def parse_ranges(text: str, words: list[str] | None = None) -> list[tuple[float, float]]:
    text = text.strip()
    if not text:
        return []
    wanted = {re.sub(r"\W", "", w.lower()) for w in (words or [])}
    out: list[tuple[float, float]] = []
    if text.startswith("["):
        return [(_time(a), _time(b)) for a, b in json.loads(text)]
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("{"):
            obj = json.loads(line)
            word = str(obj.get("word", obj.get("text", "")))
            if wanted and re.sub(r"\W", "", word.lower()) not in wanted:
                continue
            out.append((_time(obj["start"]), _time(obj["end"])))
            continue
        parts = [p for p in re.split(r"[\s,;]+", line) if p]
        if len(parts) < 2:
            raise ValueError(f"ranges file line {lineno}: expected 'start end', got {line!r}")
        out.append((_time(parts[0]), _time(parts[1])))
    for a, b in out:
        if b < a or a < 0:
            raise ValueError(f"bad mute range [{a}, {b}]")
    return out


def apply_ranges(y: np.ndarray, sr: int, ranges: list[tuple[float, float]], mode: str = "silence",
                 beep_hz: float = 1000.0, fade_s: float = 0.005) -> float:
    """Silence (or replace by a beep) each range in place on (channels, n); returns the seconds covered."""
    n = y.shape[1]
    covered = np.zeros(n, bool)
    for a, b in ranges:
        i, j = max(0, int(np.floor(a * sr))), min(n, int(np.ceil(b * sr)))
        if j > i:
            covered[i:j] = True
    if not covered.any():
        return 0.0
    y[:, covered] = 0.0
    if mode == "beep":
        t = np.arange(n) / sr
        tone = (0.2 * np.sin(2 * np.pi * beep_hz * t)).astype(np.float32)
        # short fades so the beep edges do not click
        edges = np.flatnonzero(np.diff(np.r_[0, covered.astype(np.int8), 0]))
        env = covered.astype(np.float32)
        k = max(1, int(fade_s * sr))
        ramp = np.linspace(0, 1, k, dtype=np.float32)
        for s, e in zip(edges[::2], edges[1::2]):
            m = min(k, (e - s) // 2)
            if m > 0:
                env[s:s + m] *= ramp[:m]
                env[e - m:e] *= ramp[:m][::-1]
        y[:, covered] = (tone * env)[covered]
    return float(covered.sum()) / sr
