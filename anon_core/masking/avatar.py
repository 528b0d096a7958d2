"""Avatar substitution: a drawn, synthetic cartoon face aligned to the detected landmarks.

Nothing of the original face is reused: the region is first replaced by a flat skin tone
(a fixed palette, not sampled from the person), then eyes, brows, nose and mouth are drawn
where the landmarks say they are, rotated with the eye line. Without landmarks, canonical
positions inside the box are used.
"""

from __future__ import annotations

import cv2
import numpy as np

from anon_core.masking.base import MaskOperator, Region, register_operator, require

PALETTE = [(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (176, 196, 222)]
# Canonical five-point layout (left eye, right eye, nose, left mouth, right mouth) in unit box coordinates.
CANONICAL = np.array([[0.33, 0.40], [0.67, 0.40], [0.50, 0.58], [0.37, 0.76], [0.63, 0.76]], np.float32)


@register_operator("avatar")
class Avatar(MaskOperator):
    def __init__(self, style: int | None = None, outline: bool = True):
        require(style is None or 0 <= int(style) < len(PALETTE), f"avatar.style must be 0..{len(PALETTE) - 1}")
        self.style = None if style is None else int(style)
        self.outline = bool(outline)

    def params(self) -> dict:
        return {"style": self.style, "outline": self.outline}

    def apply(self, roi: np.ndarray, mask: np.ndarray, region: Region) -> np.ndarray:
        x1, y1, x2, y2 = (float(v) for v in region.box)
        w, h = max(x2 - x1, 2.0), max(y2 - y1, 2.0)
        lm = region.landmarks
        if lm is None or len(lm) < 5 or not np.all(np.isfinite(lm)):
            lm = CANONICAL * [w, h] + [x1, y1]
        # Colour chosen from the geometry, so one face keeps its avatar across frames but no pixel is sampled.
        idx = self.style if self.style is not None else int(abs(x1 * 7 + y1 * 13)) % 4
        skin = PALETTE[idx]
        out = np.empty_like(roi)
        out[...] = skin
        eye_l, eye_r, nose, m_l, m_r = (lm[i].astype(np.float32) for i in range(5))
        eye_dist = max(float(np.linalg.norm(eye_r - eye_l)), w * 0.2)
        angle = float(np.degrees(np.arctan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0])))
        dark = (40, 30, 30)
        lw = max(1, round(eye_dist / 12))
        centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
        if self.outline:
            cv2.ellipse(out, centre, (round(w / 2) - lw, round(h / 2) - lw), angle, 0, 360, dark, lw, cv2.LINE_AA)
        er = max(1, round(eye_dist * 0.18))
        for e in (eye_l, eye_r):
            c = (round(float(e[0])), round(float(e[1])))
            cv2.ellipse(out, c, (er, max(1, round(er * 0.7))), angle, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(out, c, max(1, round(er * 0.5)), dark, -1, cv2.LINE_AA)
            brow = (round(float(e[0])), round(float(e[1]) - er * 1.6))
            cv2.ellipse(out, brow, (er, max(1, er // 2)), angle, 200, 340, dark, lw, cv2.LINE_AA)
        cv2.circle(out, (round(float(nose[0])), round(float(nose[1]))), max(1, round(er * 0.35)), dark, -1,
                   cv2.LINE_AA)
        mouth_c = (m_l + m_r) / 2
        mw = max(2.0, float(np.linalg.norm(m_r - m_l)) / 2)
        cv2.ellipse(out, (round(float(mouth_c[0])), round(float(mouth_c[1]) - mw * 0.3)),
                    (round(mw), max(1, round(mw * 0.6))), angle, 20, 160, (150, 40, 50), lw, cv2.LINE_AA)
        return out
