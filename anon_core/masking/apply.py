"""Composite mask operators into a frame, per class, through box or ellipse shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import cv2
import numpy as np

from anon_core.boxes import scale_about_centre
from anon_core.detections import Detections
from anon_core.masking.base import MaskOperator, Region, create_operator, operator_factory
from anon_core.schema import SchemaError, check_choices, check_params

Shape = Literal["ellipse", "box", "silhouette"]
SHAPES: tuple[str, ...] = get_args(Shape)


@dataclass
class MaskSpec:
    """How one class is masked: operator, its parameters, region shape and scale."""

    operator: str = "blur"
    shape: Shape = "ellipse"
    scale: float = 1.3  # boxes hug the face; 1.3 covers hair line, ears and chin
    params: dict[str, Any] = field(default_factory=dict)
    # Growth for small boxes: a detector's box on a 10-20 px face is often offset by a few pixels, which a
    # relative scale cannot absorb. After `scale`, the region's shorter side is raised to at least `min_side`
    # px (about its centre, aspect kept), then `pad_px` px are added on every side. Both cost nothing on
    # large faces and grow the mask most where the box is least reliable.
    min_side: float = 0.0
    pad_px: float = 0.0

    def __post_init__(self) -> None:
        # A bad mask is a configuration error, reported when the config is built (not mid-run).
        check_choices(self)
        if not 0.5 <= float(self.scale) <= 4.0:
            raise SchemaError("scale", f"must be in [0.5, 4]; got {self.scale!r}")
        if not 0.0 <= float(self.min_side) <= 256.0:
            raise SchemaError("min_side", f"must be in [0, 256] px; got {self.min_side!r}")
        if not 0.0 <= float(self.pad_px) <= 64.0:
            raise SchemaError("pad_px", f"must be in [0, 64] px; got {self.pad_px!r}")
        try:
            factory = operator_factory(self.operator)
        except ValueError as exc:
            raise SchemaError("operator", str(exc)) from None
        check_params(self.params, factory, f"mask operator {self.operator!r}")
        try:
            factory(**self.params)  # operators are cheap to build and check their own values
        except (TypeError, ValueError) as exc:
            raise SchemaError("params", str(exc)) from None

    def build(self) -> MaskOperator:
        return create_operator(self.operator, **self.params)

    def region(self, xyxy: np.ndarray) -> np.ndarray:
        """The masked regions (N, 4) of detection boxes (N, 4): scale, then small-box growth, then padding."""
        box = scale_about_centre(np.asarray(xyxy, np.float32).reshape(-1, 4), self.scale)
        if self.min_side > 0 and len(box):
            side = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
            box = scale_about_centre(box, np.maximum(1.0, self.min_side / np.maximum(side, 1e-3)))
        if self.pad_px > 0:
            box = box + np.float32(self.pad_px) * np.array([-1, -1, 1, 1], np.float32)
        return box


class Masker:
    def __init__(self, specs: dict[str, MaskSpec], default: MaskSpec | None = None):
        self.specs = specs
        self.default = default
        self.ops = {k: s.build() for k, s in specs.items()}
        self.default_op = default.build() if default else None

    def spec_for(self, label: str) -> tuple[MaskSpec, MaskOperator] | None:
        if label in self.specs:
            return self.specs[label], self.ops[label]
        if self.default is not None:
            return self.default, self.default_op
        return None

    def describe(self) -> dict:
        return {k: {"operator": s.operator, "shape": s.shape, "scale": s.scale, "min_side": s.min_side,
                    "pad_px": s.pad_px, **self.ops[k].params()}
                for k, s in self.specs.items()}

    def apply(self, image: np.ndarray, dets: Detections, recorder=None, frame_index: int = 0
              ) -> tuple[np.ndarray, int]:
        """Returns the masked copy and the number of regions masked.

        `recorder` (vault.enabled, anon_core/vault/recorder.py) receives each region's pixels just before
        they are overwritten, so the mask can be reversed.
        """
        out = image.copy()
        h, w = image.shape[:2]
        n = 0
        # Large regions first, so a small face inside a masked person still gets its own mask on top.
        order = np.argsort(-(dets.wh[:, 0] * dets.wh[:, 1])) if len(dets) else []
        for i in order:
            found = self.spec_for(str(dets.labels[i]))
            if found is None:
                continue
            spec, op = found
            box = spec.region(dets.xyxy[i : i + 1])[0]
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            # Context margin so blurs have real pixels to mix in at the region's edge.
            mx, my = (box[2] - box[0]) * 0.25 + 2, (box[3] - box[1]) * 0.25 + 2
            rx1, ry1 = int(max(0, np.floor(box[0] - mx))), int(max(0, np.floor(box[1] - my)))
            rx2, ry2 = int(min(w, np.ceil(box[2] + mx))), int(min(h, np.ceil(box[3] + my)))
            if rx2 <= rx1 or ry2 <= ry1:
                continue
            local = box - [rx1, ry1, rx1, ry1]
            mask = self._shape_mask(spec.shape, (ry2 - ry1, rx2 - rx1), local, dets, i, (rx1, ry1))
            if not mask.any():
                continue
            lm = None
            if dets.landmarks is not None and dets.landmarks.ndim == 3:
                lm = dets.landmarks[i] - [rx1, ry1]
                if not np.isfinite(lm).all():  # a region without landmarks (a person's head, anon_core/heads.py)
                    lm = None
            roi = out[ry1:ry2, rx1:rx2]
            new = op.apply(roi.copy(), mask, Region(local, lm, str(dets.labels[i])))
            if recorder is not None:
                recorder.record(frame_index, out, rx1, ry1, mask)
            roi[mask] = new[mask]
            n += 1
        return out, n

    @staticmethod
    def _shape_mask(shape: str, size: tuple[int, int], box: np.ndarray, dets: Detections, i: int,
                    origin: tuple[int, int]) -> np.ndarray:
        if shape == "silhouette" and dets.masks is not None and dets.masks[i] is not None:
            m = dets.masks[i]
            x0, y0 = origin
            crop = m[y0 : y0 + size[0], x0 : x0 + size[1]].astype(bool)
            if crop.any():
                # Dilate so the silhouette's soft edge (hair, fingers) is covered too.
                k = max(3, int(0.04 * max(box[2] - box[0], box[3] - box[1])) | 1)
                return cv2.dilate(crop.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
        mask = np.zeros(size, np.uint8)
        x1, y1 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
        x2, y2 = int(np.ceil(min(box[2], size[1]))), int(np.ceil(min(box[3], size[0])))
        if shape == "box" or shape == "silhouette" or (x2 - x1) < 4 or (y2 - y1) < 4:
            mask[y1:y2, x1:x2] = 1
        else:
            c = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            axes = ((box[2] - box[0]) / 2, (box[3] - box[1]) / 2)
            # Sub-pixel ellipse via cv2's fixed-point shift, so small faces stay covered.
            cv2.ellipse(mask, (round(c[0] * 16), round(c[1] * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                        0, 0, 360, 1, -1, cv2.LINE_8, 4)
        return mask.astype(bool)
