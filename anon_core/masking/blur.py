"""Gaussian blur whose strength scales with the region, so large faces are as unreadable as small ones."""

from __future__ import annotations

import cv2
import numpy as np

from anon_core.masking.base import MaskOperator, Region, register_operator, require


@register_operator("blur")
class GaussianBlur(MaskOperator):
    def __init__(self, strength: float = 0.25, min_sigma: float = 3.0):
        # sigma = strength x the region's longer side: at 0.25 a face keeps its colour blob but no features.
        require(0.02 <= strength <= 2.0, "blur.strength must be in [0.02, 2]")
        require(min_sigma >= 0.5, "blur.min_sigma must be >= 0.5")
        self.strength, self.min_sigma = float(strength), float(min_sigma)

    def params(self) -> dict:
        return {"strength": self.strength, "min_sigma": self.min_sigma}

    def apply(self, roi: np.ndarray, mask: np.ndarray, region: Region) -> np.ndarray:
        w, h = region.box[2] - region.box[0], region.box[3] - region.box[1]
        sigma = max(self.min_sigma, self.strength * max(w, h))
        # Blurring a downscaled copy is equivalent at these sigmas and keeps large faces cheap.
        factor = max(1.0, sigma / 4.0)
        small = cv2.resize(roi, (max(1, round(roi.shape[1] / factor)), max(1, round(roi.shape[0] / factor))),
                           interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / factor, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_LINEAR)
