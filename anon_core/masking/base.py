"""Mask operators behind one registry (one small module per operator, each validating its parameters).

An operator turns the pixels of one region into unrecognizable pixels. It receives the region of
interest (a copy, with some context around the detection), the boolean shape mask inside it and
the detection's geometry in ROI coordinates, and returns the replacement ROI. `apply.py` composites
the result through the shape mask, so operators never touch pixels outside their region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Region:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in ROI pixels (after mask scale)
    landmarks: np.ndarray | None  # (K, 2) in ROI pixels, faces only
    label: str


class MaskOperator:
    name = "operator"

    def apply(self, roi: np.ndarray, mask: np.ndarray, region: Region) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict:
        return {}


_OPERATORS: dict[str, Callable[..., MaskOperator]] = {}


def register_operator(name: str):
    def wrap(cls):
        cls.name = name
        _OPERATORS[name] = cls
        return cls

    return wrap


ENTRY_POINT_GROUP = "anon.masks"  # third-party operators (see anon_core/plugins.py)


def operator_factory(name: str) -> Callable[..., MaskOperator]:
    """The registered operator class (or an `anon.masks` entry point); its constructor declares the parameters."""
    from anon_core.plugins import plugin

    factory = _OPERATORS.get(name) or plugin(ENTRY_POINT_GROUP, name)
    if factory is None:
        raise ValueError(f"unknown mask operator {name!r}; known: {available_operators()}")
    return factory


def create_operator(name: str, **params) -> MaskOperator:
    op = operator_factory(name)(**params)
    if not isinstance(op, MaskOperator):
        raise TypeError(f"mask operator {name!r} is a {type(op).__name__}, not an anon_core.masking.MaskOperator")
    return op


def available_operators() -> list[str]:
    from anon_core.plugins import plugin_names

    return sorted(set(_OPERATORS) | set(plugin_names(ENTRY_POINT_GROUP)))


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)
