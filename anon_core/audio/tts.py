"""Offline text-to-speech with eSpeak NG (formant synthesis), for the `resynth` voice method.

The library and its voice data come from the installed `espeakng-loader` wheel (`libespeak-ng.so` and
`espeak-ng-data/`, eSpeak NG 1.52, GPL-3.0-or-later); it is loaded with ctypes, nothing is downloaded and no
espeak executable is needed. eSpeak NG keeps one global synthesizer per process, so calls are serialised by a lock.
Output: mono int16 at the library's rate (22,050 Hz), returned as float32 in [-1, 1].
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

PACKAGE = "espeakng_loader"
_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS (samples through the callback, no sound device)
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER ids
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()


class TtsUnavailable(RuntimeError):
    """eSpeak NG (the `espeakng-loader` wheel) is missing or does not start."""


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def _paths() -> tuple[Path, Path]:
    """The shared library and the voice data, as the wheel itself locates them."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise TtsUnavailable("package espeakng-loader is not installed (pip install espeakng-loader)") from exc
    try:
        return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())
    except RuntimeError as exc:  # the wheel raises when its data folder is missing
        raise TtsUnavailable(str(exc)) from exc


class Espeak:
    """One process-wide eSpeak NG synthesizer (use `engine()`)."""

    def __init__(self) -> None:
        lib_path, data = _paths()
        if not lib_path.is_file() or not (data / "phontab").is_file():
            raise TtsUnavailable(f"{lib_path.parent}: libespeak-ng or espeak-ng-data missing")
        try:
            self.lib = ctypes.CDLL(str(lib_path))
        except OSError as exc:
            raise TtsUnavailable(f"cannot load {lib_path.name}: {exc}") from exc
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = int(self.lib.espeak_Initialize(_SYNCHRONOUS, 0, str(data).encode(), 0))
        if self.sample_rate <= 0:
            raise TtsUnavailable("espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._collect)  # kept referenced: the library calls it from espeak_Synth
        self.lib.espeak_SetSynthCallback(self._cb)
        self._voice = ""

    def _collect(self, wav, n: int, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on

    def say(self, text: str, voice: str = "en-us", rate_wpm: int = 165, pitch: int = 50,
            pitch_range: int = 50) -> np.ndarray:
        """Float32 samples of `text` spoken by `voice` at `rate_wpm` words per minute (80-450)."""
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            if voice != self._voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise TtsUnavailable(f"eSpeak NG has no voice {voice!r}")
                self._voice = voice
            for param, value in ((_RATE, int(np.clip(rate_wpm, 80, 450))), (_PITCH, pitch), (_RANGE, pitch_range)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            rc = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if rc != 0:
            raise TtsUnavailable(f"espeak_Synth failed ({rc})")
        y = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return y.astype(np.float32) / 32768.0


@lru_cache(maxsize=1)
def _engine() -> Espeak:
    return Espeak()


def engine() -> Espeak:
    """The process-wide synthesizer; raises TtsUnavailable when the wheel is missing or broken."""
    with _LOCK:
        return _engine()
