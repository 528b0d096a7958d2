"""Re-identification attack (anon_core/evaluation/reid.py): controls pass, strong masks defeat it; validate --reid."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASTRONAUT_FACE

pytest.importorskip("dlib")
cbook = pytest.importorskip("matplotlib.cbook")


@pytest.fixture(scope="module")
def faces(astronaut):
    """(image, face boxes) pairs: the astronaut plus 12 different LFW faces (skimage's subset), one per canvas."""
    from skimage import data

    items = [(astronaut, np.array([ASTRONAUT_FACE], np.float64))]
    lfw = data.lfw_subset()[:12]  # the first 100 are faces
    for i, f in enumerate(lfw):
        face = cv2.resize((f * 255).astype(np.uint8), (120, 120), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((200, 200, 3), 90 + 10 * i, np.uint8)
        canvas[40:160, 40:160] = face[..., None]
        items.append((canvas, np.array([[50, 45, 150, 155]], np.float64)))
    return items


def test_controls_and_masks(faces):
    from anon_core.evaluation.reid import _gt_masker, jpeg_roundtrip, run_attack
    from anon_core.masking.apply import MaskSpec

    fill = _gt_masker(MaskSpec("fill", "box", 1.0, {"color": [0, 0, 0]}))
    weak = _gt_masker(MaskSpec("blur", "ellipse", 1.3, {"strength": 0.02}))
    pix = _gt_masker(MaskSpec("pixelate", "box", 1.3, {}))
    items = [(rgb, b, {"unmasked": jpeg_roundtrip,
                       "weak_blur": lambda x, b=b: jpeg_roundtrip(weak(x, b)),
                       "pixelate": lambda x, b=b: jpeg_roundtrip(pix(x, b)),
                       "fill": lambda x, b=b: jpeg_roundtrip(fill(x, b))}) for rgb, b in faces]
    r = run_attack(items)
    assert r["n_faces"] == 13 and r["chance"] == round(1 / 13, 5)
    rank1 = {k: v["all"] for k, v in r["rank1"].items()}
    assert rank1["unmasked"] == 1.0
    assert rank1["fill"] <= 2 / 13  # chance level: a black box says nothing about who it was
    assert rank1["weak_blur"] > rank1["fill"]  # a barely-blurred face is still recognised
    assert set(r["rank1"]["unmasked"]) >= {"all", "64+"}


def test_validate_reports_reid(tmp_path, astronaut):
    import argparse

    from jobs.validate import add_arguments, validate

    d = tmp_path / "faces"
    (d / "images").mkdir(parents=True)
    rows = []
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    hopper = cv2.resize(hopper, (427, 500), interpolation=cv2.INTER_AREA)
    # face boxes measured once with the default face detector
    for name, img, box in (("a.jpg", astronaut, list(ASTRONAUT_FACE)), ("b.jpg", hopper, [147, 98, 296, 277])):
        Image.fromarray(img).save(d / "images" / name, quality=95)
        h, w = img.shape[:2]
        rows.append({"file": f"images/{name}", "width": w, "height": h, "boxes": [box], "ignore": []})
    (d / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--data", str(d), "-o", str(tmp_path / "val"), "--no-mlflow", "--reid", "--set", "policy=faces"])
    summary = validate(args)
    assert set(summary["reid_rank1"]) == {"unmasked", "pipeline", "mask_on_gt_boxes", "fill"}
    assert summary["reid_rank1"]["unmasked"] == 1.0
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["reid"]["n_faces"] == 2 and "64+" in metrics["reid"]["rank1"]["pipeline"]
