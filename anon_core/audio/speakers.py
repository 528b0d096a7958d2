"""Who speaks when, so that each speaker gets a voice of their own.

Backends:
- `single`: every speech segment is one speaker (no extra dependency).
- `resemblyzer`: offline fallback. Speaker embeddings (GE2E d-vectors from the `resemblyzer` wheel's own
  weights) on ~1.6 s windows of speech, agglomerative clustering (average linkage, cosine distance threshold),
  labels smoothed in time. Needs torch.
- `pyannote`: a pyannote.audio pipeline from a local folder the user gives (`audio.pyannote_model`); nothing is
  ever fetched from a hub. The waveform is handed over in memory (no torchaudio decoding).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache

import numpy as np

from anon_core.media.errors import AssetError

log = logging.getLogger(__name__)

Turn = tuple[float, float, str]


class AudioConfigError(AssetError):
    code = "config"


def resemblyzer_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("resemblyzer", "torch", "librosa"))


def pick_backend(name: str) -> str:
    if name == "auto":
        return "resemblyzer" if resemblyzer_available() else "single"
    return name


@lru_cache(maxsize=1)
def voice_encoder():
    """The resemblyzer encoder on CPU, one thread (its LSTM is small; extra threads only contend)."""
    import torch

    torch.set_num_threads(1)
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


def embed(x16: np.ndarray) -> np.ndarray:
    """One L2-normalised d-vector for 16 kHz mono audio (the attacker in benchmarks uses the same)."""
    return voice_encoder().embed_utterance(np.asarray(x16, np.float32))


def diarize(x16: np.ndarray, segments: list[tuple[float, float]], backend: str, *, threshold: float = 0.35,
            max_speakers: int = 8, pyannote_model: str = "") -> tuple[list[Turn], str]:
    """Speaker turns covering the speech segments (16 kHz mono input) and the backend used."""
    backend = pick_backend(backend)
    if not segments:
        return [], backend
    if backend == "single":
        return [(a, b, "spk0") for a, b in segments], backend
    if backend == "resemblyzer":
        if not resemblyzer_available():
            raise AudioConfigError("audio.speakers=resemblyzer needs the resemblyzer and torch packages")
        return _resemblyzer_turns(x16, segments, threshold, max_speakers), backend
    if backend == "pyannote":
        return _pyannote_turns(x16, segments, pyannote_model), backend
    raise AudioConfigError(f"unknown speaker backend {backend!r}")


def _resemblyzer_turns(x16: np.ndarray, segments: list[tuple[float, float]], threshold: float,
                       max_speakers: int) -> list[Turn]:
    from scipy.cluster.hierarchy import fcluster, linkage

    enc = voice_encoder()
    sr = 16000
    centers: list[tuple[int, float]] = []  # (segment index, centre time)
    embeds: list[np.ndarray] = []
    for si, (a, b) in enumerate(segments):
        seg = x16[int(a * sr): int(b * sr)]
        if len(seg) < int(0.3 * sr):
            continue  # too short to say who it is: takes its neighbour's label below
        _, partials, slices = enc.embed_utterance(seg, return_partials=True, rate=2.0, min_coverage=0.5)
        for emb, sl in zip(partials, slices):  # slices are in samples; the last one may run past the end
            mid = (sl.start + min(sl.stop, len(seg))) / 2
            centers.append((si, a + float(mid) / sr))
            embeds.append(emb)
    if len(embeds) < 2:
        return [(a, b, "spk0") for a, b in segments]
    e = np.stack(embeds)
    z = linkage(e, method="average", metric="cosine")
    labels = fcluster(z, t=threshold, criterion="distance")
    if labels.max() > max_speakers:
        labels = fcluster(z, t=max_speakers, criterion="maxclust")
    labels = _absorb_small(e, labels)
    labels = _median3(labels)
    # relabel by first appearance: spk0, spk1, ... (stable names for keyed targets)
    order: dict[int, str] = {}
    for lab in labels:
        order.setdefault(int(lab), f"spk{len(order)}")
    turns: list[Turn] = []
    for si, (a, b) in enumerate(segments):
        pts = [(t, order[int(lab)]) for (s, t), lab in zip(centers, labels) if s == si]
        if not pts:
            near = min(range(len(centers)), key=lambda k: abs(centers[k][1] - (a + b) / 2))
            turns.append((a, b, order[int(labels[near])]))
            continue
        start = a
        for k in range(1, len(pts)):
            if pts[k][1] != pts[k - 1][1]:
                cut = (pts[k - 1][0] + pts[k][0]) / 2
                turns.append((start, cut, pts[k - 1][1]))
                start = cut
        turns.append((start, b, pts[-1][1]))
    return turns


def _absorb_small(e: np.ndarray, labels: np.ndarray, min_windows: int = 4) -> np.ndarray:
    """Clusters of under ~2 s of speech (laughs, overlaps, noise) join the nearest larger cluster's centroid."""
    ids, counts = np.unique(labels, return_counts=True)
    big = ids[counts >= min_windows]
    if len(big) == 0 or len(big) == len(ids):
        return labels
    cents = np.stack([e[labels == b].mean(axis=0) for b in big])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    out = labels.copy()
    small = ~np.isin(labels, big)
    out[small] = big[np.argmax(e[small] @ cents.T, axis=1)]
    return out


def _median3(labels: np.ndarray) -> np.ndarray:
    """Remove single-window label flips (a lone window inside another speaker's run)."""
    out = labels.copy()
    for i in range(1, len(labels) - 1):
        if labels[i - 1] == labels[i + 1] != labels[i]:
            out[i] = labels[i - 1]
    return out


def _pyannote_turns(x16: np.ndarray, segments: list[tuple[float, float]], model_path: str) -> list[Turn]:
    if not model_path:
        raise AudioConfigError("audio.speakers=pyannote needs audio.pyannote_model: a local pipeline folder "
                               "(no model is downloaded)")
    if not os.path.exists(model_path):
        raise AudioConfigError(f"audio.pyannote_model {model_path!r} does not exist")
    if importlib.util.find_spec("pyannote.audio") is None:
        raise AudioConfigError("audio.speakers=pyannote needs the pyannote.audio package (not installed by default)")
    pipeline = _pyannote_pipeline(model_path)
    import torch

    result = pipeline({"waveform": torch.from_numpy(np.asarray(x16, np.float32))[None], "sample_rate": 16000})
    annotation = getattr(result, "speaker_diarization", result)  # pyannote 4 wraps the annotation
    raw = [(float(seg.start), float(seg.end), str(label)) for seg, _, label in annotation.itertracks(yield_label=True)]
    names: dict[str, str] = {}
    turns: list[Turn] = []
    for a, b, lab in sorted(raw):
        turns.append((a, b, names.setdefault(lab, f"spk{len(names)}")))
    # speech that VAD found but pyannote did not label keeps the nearest turn's speaker
    out: list[Turn] = []
    for a, b in segments:
        inside = [(max(a, s), min(b, e), lab) for s, e, lab in turns if e > a and s < b]
        if inside:
            out.extend(inside)
        elif turns:
            out.append((a, b, min(turns, key=lambda t: abs((t[0] + t[1]) / 2 - (a + b) / 2))[2]))
        else:
            out.append((a, b, "spk0"))
    return out


@lru_cache(maxsize=2)
def _pyannote_pipeline(model_path: str):
    from anon_core.offline import go_offline

    go_offline()  # a local folder only: never reach a hub (HF_HUB_OFFLINE & co.)
    from pyannote.audio import Pipeline

    path = os.path.join(model_path, "config.yaml") if os.path.isdir(model_path) else model_path
    return Pipeline.from_pretrained(path)
