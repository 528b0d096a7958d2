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


def operator_factory(name: str) -> Callable[..., MaskOperator]:
    """The registered operator class; its constructor declares the parameters."""
    if name not in _OPERATORS:
        raise ValueError(f"unknown mask operator {name!r}; known: {sorted(_OPERATORS)}")
    return _OPERATORS[name]


def create_operator(name: str, **params) -> MaskOperator:
    return operator_factory(name)(**params)


def available_operators() -> list[str]:
    return sorted(_OPERATORS)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)
