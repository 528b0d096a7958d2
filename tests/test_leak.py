"""Leak-rate checks on a real photo (skimage's astronaut) with synthetic anonymizations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from anon_core.evaluation import GroundTruthImage, leak_image, leak_video, over_masking

FACE = (170, 50, 290, 200)  # x1, y1, x2, y2 of the astronaut's head in the 512x512 image


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return data.astronaut()


def _apply(img: np.ndarray, box, fn) -> np.ndarray:
    out = img.copy()
    x1, y1, x2, y2 = box
    out[y1:y2, x1:x2] = fn(np.ascontiguousarray(img[y1:y2, x1:x2]))
    return out


def blur(crop: np.ndarray, k: float = 0.1) -> np.ndarray:
    return cv2.GaussianBlur(crop, (0, 0), k * min(crop.shape[:2]))


def pixelate(crop: np.ndarray, blocks: int = 8) -> np.ndarray:
    h, w = crop.shape[:2]
    small = cv2.resize(crop, (blocks, max(1, round(blocks * h / w))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def fill(crop: np.ndarray) -> np.ndarray:
    return np.full_like(crop, 30)


def quarter_blur(crop: np.ndarray) -> np.ndarray:
    out = crop.copy()
    h, w = crop.shape[:2]
    out[: h // 2, : w // 2] = blur(crop, 0.25)[: h // 2, : w // 2]
    return out


def jpeg(img: np.ndarray, q: int = 50) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("fn", [blur, pixelate, fill], ids=["blur", "pixelate", "fill"])
def test_masked_face_is_obscured(img, fn):
    anon = _apply(img, FACE, fn)
    r = leak_image(img, anon, np.array([FACE], float))
    assert r.evaluated.tolist() == [True]
    assert r.leaked.tolist() == [False], (r.ssim, r.detail)
    assert r.leak_rate == 0.0
    assert r.over_masking == 0.0  # nothing outside the box changed


@pytest.mark.parametrize(
    "anon_fn",
    [lambda im: im.copy(), lambda im: _apply(im, FACE, quarter_blur), lambda im: jpeg(im, 50)],
    ids=["unchanged", "quarter_blur", "jpeg50"],
)
def test_unmasked_face_leaks(img, anon_fn):
    r = leak_image(img, anon_fn(img), np.array([FACE], float))
    assert r.leaked.tolist() == [True], (r.ssim, r.detail)
    assert r.leak_rate == 1.0


def test_small_faces_use_same_thresholds(img):
    # 24 px face: the crops are resampled to 32 px, so a size-relative blur still counts as obscured
    small = cv2.resize(img, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    box = tuple(round(v * 0.2) for v in FACE)
    assert leak_image(small, _apply(small, box, blur), np.array([box], float)).leaked.tolist() == [False]
    assert leak_image(small, small.copy(), np.array([box], float)).leaked.tolist() == [True]


def test_tiny_boxes_skipped_and_ignore(img):
    gt = GroundTruthImage("a", 512, 512, boxes=[FACE, (10, 10, 18, 40)], ignore=[(300, 300, 400, 400)])
    anon = _apply(_apply(img, FACE, fill), (300, 300, 400, 400), fill)
    r = leak_image(img, anon, gt)
    assert r.evaluated.tolist() == [True, False]  # 8 px wide box below min_size
    assert r.leaked.tolist() == [False, False]
    assert r.over_masking == 0.0  # the masked ignore region is not over-masking
    d = r.to_dict()
    assert d["n_evaluated"] == 1 and d["detail"][1] is None
    r = leak_image(img, anon, gt, min_size=5)
    assert r.evaluated.tolist() == [True, True] and r.leaked.tolist() == [False, True]


def test_over_masking(img):
    whole = cv2.GaussianBlur(img, (0, 0), 6)
    share, changed, outside = over_masking(img, whole, np.array([FACE], float))
    assert outside == 512 * 512 - 120 * 150
    assert 0.3 < share <= 1.0
    # changes below the tolerance (re-encoding noise) are not over-masking
    noisy = np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8)
    assert over_masking(img, noisy, np.zeros((0, 4)))[0] == 0.0
    with pytest.raises(ValueError):
        over_masking(img, img[:10], np.zeros((0, 4)))


def test_leak_video_runs(img):
    # frames 1-7, one tracked face; leaked on 2, 3, 4 and 6; frame 8 missing; frame 9 leaked again.
    leaked_frames = {2, 3, 4, 6, 9}
    masked = _apply(img, FACE, fill)
    frames = []
    for f in [1, 2, 3, 4, 5, 6, 7, 9]:
        gt = GroundTruthImage(f"{f:06d}.jpg", 512, 512, boxes=[FACE], track_ids=[7])
        frames.append((f, img, img if f in leaked_frames else masked, gt))
    r = leak_video(reversed(frames))  # order must not matter
    assert r["n_frames"] == 8 and r["n_evaluated"] == 8
    assert r["n_leaked"] == 5 and r["leak_rate"] == pytest.approx(5 / 8)
    assert r["longest_leak_run"] == {"7": 3}
    assert r["max_longest_leak_run"] == 3
    assert r["frame_leak_rate"] == pytest.approx(5 / 8)
