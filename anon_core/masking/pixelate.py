"""Pixelation with a fixed number of blocks across the region (block size grows with the face)."""

from __future__ import annotations

import cv2
import numpy as np

from anon_core.masking.base import MaskOperator, Region, register_operator, require


@register_operator("pixelate")
class Pixelate(MaskOperator):
    def __init__(self, blocks: int = 8):
        # Fewer than ~12 blocks across a face defeats recognisers; 8 leaves no feature readable.
        require(2 <= int(blocks) <= 32, "pixelate.blocks must be in [2, 32]")
        self.blocks = int(blocks)

    def params(self) -> dict:
        return {"blocks": self.blocks}

    def apply(self, roi: np.ndarray, mask: np.ndarray, region: Region) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in region.box)
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(roi.shape[1], max(x2, x1 + 1)), min(roi.shape[0], max(y2, y1 + 1))
        out = roi.copy()
        box = roi[y1:y2, x1:x2]
        bw = max(1, round(box.shape[1] / max((x2 - x1) / self.blocks, 1)))
        bh = max(1, round(box.shape[0] / max((y2 - y1) / self.blocks, 1)))
        small = cv2.resize(box, (min(bw, box.shape[1]), min(bh, box.shape[0])), interpolation=cv2.INTER_AREA)
        out[y1:y2, x1:x2] = cv2.resize(small, (box.shape[1], box.shape[0]), interpolation=cv2.INTER_NEAREST)
        return out
