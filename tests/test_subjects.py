"""Subject-level redaction: redact_only / keep on a two-person photo, find-subject on images and video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import ASTRONAUT_FACE
from tests.video_helpers import make_clip

pytest.importorskip("dlib")
cbook = pytest.importorskip("matplotlib.cbook")


@pytest.fixture(scope="module")
def scene(tmp_path_factory, astronaut):
    """Astronaut (left) and Grace Hopper (right, matplotlib's sample photo) side by side; refs of each."""
    base = tmp_path_factory.mktemp("subjects")
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    hopper = cv2.resize(hopper, (427, 500), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 512 + 427, 3), 200, np.uint8)
    canvas[:512, :512] = astronaut
    canvas[6:506, 512:] = hopper
    (base / "in").mkdir()
    Image.fromarray(canvas).save(base / "in" / "two.png")
    Image.fromarray(hopper).save(base / "in" / "hopper_only.png")
    # references: other pixels of the same people (mirrored, rescaled)
    ref_a = cv2.resize(astronaut[:300, 80:380][:, ::-1], (240, 240), interpolation=cv2.INTER_AREA)
    Image.fromarray(np.ascontiguousarray(ref_a)).save(base / "ref_astronaut.png")
    Image.fromarray(np.ascontiguousarray(hopper[:, ::-1])).save(base / "ref_hopper.png")
    return base, canvas


def _face_changed(out: np.ndarray, orig: np.ndarray, box) -> float:
    x1, y1, x2, y2 = box
    return float(np.abs(out[y1:y2, x1:x2].astype(int) - orig[y1:y2, x1:x2].astype(int)).mean())


HOPPER_FACE = (660, 105, 805, 280)  # measured once with the default face detector on this canvas


def _run(base, canvas, key, ref, tmp_path):
    from jobs.cli import main

    out = tmp_path / key
    rc = main(["anonymize", str(base / "in" / "two.png"), "-o", str(out), "--set", "policy=faces",
               "--set", f"subjects.{key}=[{base / ref}]", "--no-progress"])
    assert rc == 0
    img = np.asarray(Image.open(out / "two.png").convert("RGB"))
    (manifest,) = (out / "_manifests").glob("*.parquet")
    (row,) = pq.read_table(manifest).to_pylist()
    return img, row


def test_unfiltered_control_masks_both(scene, tmp_path):
    from jobs.cli import main

    base, canvas = scene
    assert main(["anonymize", str(base / "in" / "two.png"), "-o", str(tmp_path / "o"), "--set", "policy=faces",
                 "--no-progress"]) == 0
    img = np.asarray(Image.open(tmp_path / "o" / "two.png").convert("RGB"))
    assert _face_changed(img, canvas, ASTRONAUT_FACE) > 8 and _face_changed(img, canvas, HOPPER_FACE) > 8


def test_redact_only_masks_only_the_subject(scene, tmp_path):
    base, canvas = scene
    img, row = _run(base, canvas, "redact_only", "ref_astronaut.png", tmp_path)
    assert _face_changed(img, canvas, ASTRONAUT_FACE) > 8
    assert _face_changed(img, canvas, HOPPER_FACE) < 1
    extra = json.loads(row["extra_json"])["subjects"]
    assert extra["mode"] == "redact_only" and extra["faces_masked"] == 1 and extra["faces_left_visible"] >= 1
    assert row["thresholds"]  # the match threshold is in the audit row
    # embeddings never reach the audit: no 128-long float vectors anywhere in the row
    text = json.dumps({k: str(v) for k, v in row.items()})
    assert text.count("0.") < 200


def test_keep_masks_everyone_else(scene, tmp_path):
    base, canvas = scene
    img, row = _run(base, canvas, "keep", "ref_hopper.png", tmp_path)
    assert _face_changed(img, canvas, HOPPER_FACE) < 1
    assert _face_changed(img, canvas, ASTRONAUT_FACE) > 8
    assert json.loads(row["extra_json"])["subjects"]["mode"] == "keep"


def test_bad_subject_config_fails_cleanly(scene, tmp_path, capsys):
    from jobs.cli import main

    base, _ = scene
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
    for sets in (["--set", f"subjects.keep=[{blank}]"], ["--set", f"subjects.keep=[{tmp_path / 'nope.png'}]"],
                 ["--set", f"subjects.keep=[{base / 'ref_hopper.png'}]",
                  "--set", f"subjects.redact_only=[{base / 'ref_hopper.png'}]"]):
        rc = main(["anonymize", str(base / "in" / "two.png"), "-o", str(tmp_path / "o"), "--set", "policy=faces",
                   *sets])
        assert rc == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "configuration" in err[0], err
    assert not (tmp_path / "o").exists()


def test_find_subject_lists_assets_and_video_frames(scene, tmp_path, capsys):
    from jobs.cli import main

    base, _ = scene
    make_clip(str(base / "in" / "clip.mp4"), n_frames=12, size=(320, 240), fps=12, face=100, audio=False)
    rc = main(["find-subject", "--ref", str(base / "ref_astronaut.png"), str(base / "in"), "--every-s", "0.25"])
    assert rc == 0
    found = {d["asset"]: d for d in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert set(found) == {"two.png", "clip.mp4"}  # not hopper_only.png
    assert found["two.png"]["frames"] == [0] and found["two.png"]["boxes"][0][0] < 512
    clip = found["clip.mp4"]
    assert clip["frames_checked"] == 4 and clip["frames"] == [0, 3, 6, 9]
    assert clip["timestamps_s"] == [0.0, 0.25, 0.5, 0.75]
    assert all(d < 0.6 for d in clip["distances"])
    rc = main(["find-subject", "--ref", str(base / "ref_hopper.png"), str(base / "in")])
    found = {d["asset"] for d in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert rc == 0 and found == {"two.png", "hopper_only.png"}
