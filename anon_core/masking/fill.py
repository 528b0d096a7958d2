"""Solid fill: the strongest mask, nothing of the region survives."""

from __future__ import annotations

import numpy as np

from anon_core.masking.base import MaskOperator, Region, register_operator, require


@register_operator("fill")
class SolidFill(MaskOperator):
    def __init__(self, color: tuple[int, int, int] | list[int] | str = (0, 0, 0)):
        if isinstance(color, str):
            c = color.lstrip("#")
            require(len(c) == 6, "fill.color must be '#rrggbb' or three integers")
            color = tuple(int(c[i : i + 2], 16) for i in (0, 2, 4))
        color = tuple(int(v) for v in color)
        require(len(color) == 3 and all(0 <= v <= 255 for v in color), "fill.color values must be 0..255")
        self.color = color

    def params(self) -> dict:
        return {"color": list(self.color)}

    def apply(self, roi: np.ndarray, mask: np.ndarray, region: Region) -> np.ndarray:
        out = np.empty_like(roi)
        out[...] = np.asarray(self.color, dtype=roi.dtype)
        return out
