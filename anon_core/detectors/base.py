"""The detector protocol and registry: a model is chosen by config, not by code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from anon_core.detections import Detections
from anon_core.weights import ModelInfo


@runtime_checkable
class Detector(Protocol):
    """A batch of RGB uint8 frames (H, W, 3) in; one Detections per frame out."""

    classes: tuple[str, ...]

    def info(self) -> ModelInfo: ...

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]: ...


_REGISTRY: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def detector_factory(name: str) -> Callable[..., Detector]:
    """The registered factory; its signature (or its return class's constructor) declares the parameters."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def create_detector(name: str, **params) -> Detector:
    return detector_factory(name)(**params)


def available_detectors() -> list[str]:
    return sorted(_REGISTRY)
