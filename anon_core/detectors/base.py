"""The detector contract and registry: a model is chosen by config, not by code.

Everything the pipeline and the frame engine use of a detector is declared on `Detector`; nothing
probes a detector for optional attributes. A detector subclasses it and implements two hooks:

- `predict(frames, min_score, work)`: one `Detections` per frame, every detection scoring at least
  `min_score` (never above `threshold`). A lower `min_score` only adds detections below the threshold;
  it never changes the ones at or above it, so callers may ask low once and cut higher themselves.
- `model_infos()`: what the audit records about the models (name, version, weights hash, source).

and optionally `load()`, which opens the models. It runs once, on first use (`detect` or `infos`), so a
configured detector whose classes the policy does not ask for costs nothing.

Work that several detectors need (NanoDet's views feed both the person and the plate detector) goes
through the `SharedWork` object the caller creates for one batch of frames and passes to each detector.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from anon_core.detections import Detections
from anon_core.plugins import plugin, plugin_names
from anon_core.weights import ModelInfo

ENTRY_POINT_GROUP = "anon.detectors"
_LOAD_LOCK = threading.RLock()  # loading is rare and slow; one lock keeps two threads from loading twice


class SharedWork:
    """Results one detector computes and another reuses, for one call over one batch of frames.

    Created by the caller (`Anonymizer.detect`) per batch and dropped after it, so nothing outlives the
    frames it describes. Entries are per frame object and per key chosen by the producer, e.g.
    `work.for_frame(frame, ("nanodet", config))` -> a dict of that producer's per-view results.
    """

    def __init__(self) -> None:
        self._frames: dict[int, np.ndarray] = {}  # id -> frame: holding the frame keeps its id unique
        self._entries: dict[tuple[int, Hashable], dict] = {}

    def for_frame(self, frame: np.ndarray, key: Hashable) -> dict:
        fid = id(frame)
        held = self._frames.setdefault(fid, frame)
        if held is not frame:  # cannot happen while the frame is held; guards against misuse
            raise RuntimeError("SharedWork frame id reused")
        return self._entries.setdefault((fid, key), {})


class Detector(ABC):
    """A batch of RGB uint8 frames (H, W, 3) in; one Detections per frame out.

    classes: the labels this detector can return (the pipeline keeps only the policy's classes).
    threshold: detections at or above it are confident (masked on their own); below it they are candidates.
    track_candidates: whether the video tracker may use this detector's candidates (sub-threshold
        detections) to extend tracks through hard frames. Measured for faces only (benchmarks/RESULTS.md);
        other detectors' candidates are not asked for in video.
    """

    classes: tuple[str, ...] = ()
    threshold: float = 0.5
    track_candidates: bool = False

    # -- hooks a detector implements
    def load(self) -> None:  # noqa: B027  (optional hook: a detector without models has nothing to load)
        """Open the models (weights, sessions). Called once, on first use."""

    @abstractmethod
    def model_infos(self) -> list[ModelInfo]:
        """The models behind this detector (first: the main one). Called after `load`."""

    @abstractmethod
    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        """Detections scoring >= min_score per frame (min_score <= threshold). Called after `load`."""

    # -- what callers use
    def ensure_loaded(self) -> None:
        if self.__dict__.get("_anon_loaded"):
            return
        with _LOAD_LOCK:
            if not self.__dict__.get("_anon_loaded"):
                self.load()
                self._anon_loaded = True

    def detect(self, frames: Sequence[np.ndarray], min_score: float | None = None, *,
               work: SharedWork | None = None) -> list[Detections]:
        """Detections at or above `threshold`, or down to `min_score` when that is lower (candidates)."""
        self.ensure_loaded()
        cut = self.threshold if min_score is None else min(float(self.threshold), float(min_score))
        return self.predict(frames, cut, work if work is not None else SharedWork())

    def infos(self) -> list[ModelInfo]:
        self.ensure_loaded()
        return list(self.model_infos())

    def info(self) -> ModelInfo:
        return self.infos()[0]


_REGISTRY: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def detector_factory(name: str) -> Callable[..., Detector]:
    """The registered factory (built-in, `register_detector`, or an `anon.detectors` entry point); its signature
    (or its return class's constructor) declares the parameters."""
    factory = _REGISTRY.get(name) or plugin(ENTRY_POINT_GROUP, name)
    if factory is None:
        raise ValueError(f"unknown detector {name!r}; known: {available_detectors()}")
    return factory


def create_detector(name: str, **params: Any) -> Detector:
    det = detector_factory(name)(**params)
    if not isinstance(det, Detector):
        raise TypeError(f"detector {name!r} is a {type(det).__name__}, not an anon_core.detectors.Detector")
    return det


def available_detectors() -> list[str]:
    return sorted(set(_REGISTRY) | set(plugin_names(ENTRY_POINT_GROUP)))
