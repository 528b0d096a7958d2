"""Leak-rate checks on a real photo (skimage's astronaut) with synthetic anonymizations."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from anon_core.evaluation import GroundTruthImage, leak_dataset, leak_image, leak_video, over_masking
from anon_core.evaluation.leak import ControlLeak, control_outputs

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


# ------------------------------------------------------------------------------- controls (issue 15, item 5)

SHARED = Path(os.environ.get("ANON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_FACES = SHARED / "faces"


def _lfw_sheet() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """skimage's LFW subset (200 real 25x25 face crops, faces only) tiled on a mid-grey sheet at 1x and 2x."""
    faces = (data.lfw_subset()[:100] * 255).round().astype(np.uint8)
    sheet = np.full((10 * 40 + 10 * 70, 10 * 70, 3), 128, np.uint8)
    boxes = []
    for k, f in enumerate(faces):
        for scale, row0, pitch in ((1, 0, 40), (2, 400, 70)):
            crop = cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else f
            y, x = row0 + (k // 10) * pitch + 5, (k % 10) * 70 + 5
            sheet[y:y + crop.shape[0], x:x + crop.shape[1]] = crop[..., None]
            boxes.append((x, y, x + crop.shape[1], y + crop.shape[0]))
    return sheet, boxes


def _check_controls(res: dict) -> None:
    assert res["reencode"]["leak_rate"] == 1.0, res["reencode"]
    assert res["fill"]["leak_rate"] == 0.0, res["fill"]
    assert res["blur"]["leak_rate"] == 0.0, res["blur"]
    assert res["blur"]["smoothest_decile"]["n_leaked"] == 0
    assert res["reencode"]["smoothest_decile"]["n_leaked"] == res["reencode"]["smoothest_decile"]["n_evaluated"]


def test_controls_on_package_faces(img):
    """The metric's controls on real faces that ship with scikit-image: astronaut at 12-128 px, 200 LFW faces."""
    ctl = ControlLeak(jpeg_quality=92)
    for side in (12, 16, 24, 48, 128):  # shorter side (the width) of the face box
        f = side / (FACE[2] - FACE[0])
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        box = [round(v * f) for v in FACE]
        ctl.add(small, GroundTruthImage("astronaut", small.shape[1], small.shape[0], boxes=[box]))
    sheet, boxes = _lfw_sheet()
    ctl.add(sheet, GroundTruthImage("lfw", sheet.shape[1], sheet.shape[0], boxes=boxes))
    res = ctl.result()
    assert res["fill"]["n_evaluated"] == 205
    assert res["reencode"]["by_size"]["10-24"]["n_evaluated"] == 2  # the 12 and 16 px astronauts
    assert res["reencode"]["by_size"]["24-64"]["n_evaluated"] == 202
    _check_controls(res)


def test_strong_blur_of_a_smooth_face_is_not_a_leak(img):
    """A face that is smooth already (out of focus, 24 px): a strong blur must still count as obscured and an
    unmasked copy as leaked; the detail ratio is least stable exactly there."""
    f = 24 / (FACE[2] - FACE[0])
    small = cv2.GaussianBlur(cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA), (0, 0), 1.2)
    box = np.array([[round(v * f) for v in FACE]], float)
    outs = control_outputs(small, box)
    assert not leak_image(small, outs["blur"], box).leaked[0]
    assert leak_image(small, outs["reencode"], box).leaked[0]
    assert not leak_image(small, outs["fill"], box).leaked[0]


def test_bands_everywhere(img):
    boxes = np.array([FACE, (10, 300, 30, 320), (400, 400, 440, 440)], float)  # 120 px, 20 px, 40 px
    res = leak_dataset([(img, img.copy(), boxes)])
    assert res["by_size"]["10-24"] == {"n_evaluated": 1, "n_leaked": 1, "leak_rate": 1.0}
    assert res["by_size"]["24-64"]["n_evaluated"] == 1 and res["by_size"]["64+"]["n_evaluated"] == 1
    gt = GroundTruthImage("f", 512, 512, boxes=boxes, track_ids=[1, 2, 3])
    v = leak_video([(1, img, img, gt)])
    assert {k: b["n_evaluated"] for k, b in v["by_size"].items()} == {"10-24": 1, "24-64": 1, "64+": 1}


@pytest.mark.skipif(not (SHARED_FACES / "annotations.jsonl").exists(),
                    reason="../shared/data/faces absent (a fresh clone has none); set ANON_SHARED_DATA")
def test_controls_on_dev_faces():
    """The same controls on real WIDER FACE images (first 12 of ../shared/data/faces: crowds, tiny faces)."""
    from anon_core.evaluation.datasets import load_rgb
    from anon_core.evaluation.groundtruth import load_jsonl

    ctl = ControlLeak(jpeg_quality=92)
    for g in load_jsonl(SHARED_FACES)[:12]:
        ctl.add(load_rgb(g.path), g)
    res = ctl.result()
    assert res["fill"]["n_evaluated"] >= 50
    _check_controls(res)
