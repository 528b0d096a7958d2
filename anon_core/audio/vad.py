"""Voice activity detection: Silero VAD (ONNX file from the `silero-vad` wheel, run by onnxruntime; no torch),
webrtcvad as a light fallback, and an energy detector when neither is installed.

All backends return speech segments as [(start_s, end_s), ...] on the input's time axis.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache

import numpy as np
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

VAD_RATE = 16000
_SILERO_CHUNK = 512  # samples per model call at 16 kHz (32 ms)
_SILERO_CONTEXT = 64  # the model expects the last 64 samples of the previous chunk in front of each chunk


def to_rate(x: np.ndarray, sr: int, target: int = VAD_RATE) -> np.ndarray:
    """Mono float32 at `target` Hz (polyphase resampling)."""
    if x.ndim == 2:
        x = x.mean(axis=0)
    if sr == target:
        return x.astype(np.float32, copy=False)
    g = np.gcd(int(sr), int(target))
    return resample_poly(x, target // g, sr // g).astype(np.float32)


def silero_model_path() -> str | None:
    # find_spec does not import the package (its __init__ imports torch); we only need the ONNX file
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "silero_vad.onnx")
    return path if os.path.exists(path) else None


@lru_cache(maxsize=1)
def _silero_session():
    import onnxruntime as ort

    path = silero_model_path()
    if path is None:
        raise RuntimeError("silero-vad is not installed")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny sequential model: threads only add overhead
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def silero_probs(x16: np.ndarray) -> np.ndarray:
    """Speech probability per 32 ms chunk of 16 kHz mono audio."""
    sess = _silero_session()
    n = int(np.ceil(len(x16) / _SILERO_CHUNK))
    padded = np.zeros(n * _SILERO_CHUNK + _SILERO_CONTEXT, np.float32)
    padded[_SILERO_CONTEXT:_SILERO_CONTEXT + len(x16)] = x16
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(VAD_RATE, dtype=np.int64)
    probs = np.empty(n, np.float32)
    for i in range(n):
        chunk = padded[i * _SILERO_CHUNK: (i + 1) * _SILERO_CHUNK + _SILERO_CONTEXT][None, :]
        out, state = sess.run(None, {"input": chunk, "state": state, "sr": sr})
        probs[i] = out.reshape(-1)[0]
    return probs


def webrtc_flags(x16: np.ndarray, aggressiveness: int = 2, frame_ms: int = 30) -> np.ndarray:
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    step = VAD_RATE * frame_ms // 1000
    pcm = (np.clip(x16, -1, 1) * 32767).astype("<i2")
    n = len(pcm) // step
    return np.array([vad.is_speech(pcm[i * step:(i + 1) * step].tobytes(), VAD_RATE) for i in range(n)], np.float32)


def energy_flags(x16: np.ndarray, frame_ms: int = 30) -> np.ndarray:
    """Frames well above the file's noise floor (the 10th percentile of frame energy)."""
    step = VAD_RATE * frame_ms // 1000
    n = len(x16) // step
    if n == 0:
        return np.zeros(0, np.float32)
    frames = x16[: n * step].reshape(n, step)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    floor = np.percentile(db, 10)
    return ((db > floor + 15) & (db > -55)).astype(np.float32)


def _segments(flags: np.ndarray, hop_s: float, threshold: float, min_speech_s: float,
              min_silence_s: float) -> list[tuple[float, float]]:
    """Hysteresis on per-frame probabilities -> merged segments."""
    on, off = threshold, max(threshold - 0.15, 0.01)
    segs: list[list[float]] = []
    active, start = False, 0
    for i, p in enumerate(flags):
        if not active and p >= on:
            active, start = True, i
        elif active and p < off:
            active = False
            segs.append([start * hop_s, i * hop_s])
    if active:
        segs.append([start * hop_s, len(flags) * hop_s])
    merged: list[list[float]] = []
    for s in segs:
        if merged and s[0] - merged[-1][1] < min_silence_s:
            merged[-1][1] = s[1]
        else:
            merged.append(s)
    return [(a, b) for a, b in merged if b - a >= min_speech_s]


def available_backend(preferred: str = "auto") -> str:
    if preferred != "auto":
        return preferred
    if silero_model_path() is not None and importlib.util.find_spec("onnxruntime") is not None:
        return "silero"
    if importlib.util.find_spec("webrtcvad") is not None:
        return "webrtc"
    return "energy"


def detect_speech(x: np.ndarray, sr: int, backend: str = "auto", threshold: float = 0.5,
                  min_speech_s: float = 0.1, min_silence_s: float = 0.3) -> tuple[list[tuple[float, float]], str]:
    """Speech segments in seconds and the backend that found them."""
    duration = (x.shape[-1]) / float(sr)
    backend = available_backend(backend)
    if backend == "none":
        return [(0.0, duration)], "none"
    x16 = to_rate(x, sr)
    if backend == "silero":
        try:
            flags, hop = silero_probs(x16), _SILERO_CHUNK / VAD_RATE
        except Exception as exc:  # a broken model file must not stop anonymization: fall back, say so
            log.warning("silero VAD failed (%s); using webrtc/energy", exc)
            backend = "webrtc" if importlib.util.find_spec("webrtcvad") else "energy"
    if backend == "webrtc":
        flags, hop, threshold = webrtc_flags(x16), 0.03, 0.5
    elif backend == "energy":
        flags, hop, threshold = energy_flags(x16), 0.03, 0.5
    elif backend != "silero":
        raise ValueError(f"unknown VAD backend {backend!r}")
    segs = _segments(flags, hop, threshold, min_speech_s, min_silence_s)
    return [(a, min(b, duration)) for a, b in segs], backend
