"""`anon validate` end to end on hand-made ground truth: skimage's astronaut pasted at known boxes + negatives.

One MLflow run (temp sqlite store) is shared by the checks on outputs, calibration and --write-config; a second,
MLflow-free run covers the MOT/video path. Detection runs at one scale to keep this a few seconds on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from anon_core.config import AnonConfig

from .conftest import ASTRONAUT_FACE

FAST = ["detectors.face.params.scales=[1.0]", "detectors.face.params.max_side=640"]
HEAD = (140, 20, 310, 220)  # crop of the astronaut photo around the face, pasted into the test images


def _canvas(w: int, h: int, seed: int) -> np.ndarray:
    # smooth random background: no face-like structure, but not flat (over-masking must stay ~0)
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _paste(canvas: np.ndarray, head: np.ndarray, x: int, y: int, scale: float) -> list[float]:
    hh, hw = head.shape[:2]
    patch = cv2.resize(head, (round(hw * scale), round(hh * scale)), interpolation=cv2.INTER_AREA)
    canvas[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
    return [x + (fx1 - HEAD[0]) * scale, y + (fy1 - HEAD[1]) * scale,
            x + (fx2 - HEAD[0]) * scale, y + (fy2 - HEAD[1]) * scale]


@pytest.fixture(scope="module")
def box_set(tmp_path_factory, astronaut) -> Path:
    """faces/annotations.jsonl: 3 images with one or two known faces, 2 negatives."""
    root = tmp_path_factory.mktemp("data") / "faces"
    (root / "images").mkdir(parents=True)
    head = astronaut[HEAD[1]:HEAD[3], HEAD[0]:HEAD[2]]
    layout = {"a.png": [(20, 30, 0.8)], "b.png": [(200, 60, 0.6), (20, 20, 0.9)], "c.png": [(120, 40, 1.0)],
              "neg1.png": [], "neg2.png": []}
    rows = []
    for i, (name, pastes) in enumerate(layout.items()):
        img = _canvas(384, 288, i)
        boxes = [_paste(img, head, x, y, s) for x, y, s in pastes]
        Image.fromarray(img).save(root / "images" / name)
        rows.append({"file": f"images/{name}", "width": 384, "height": 288, "boxes": boxes, "ignore": []})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def validated(box_set, tmp_path_factory):
    """One `anon validate` run with MLflow, calibration and --write-config; returns (out, summary, stdout)."""
    import io
    from contextlib import redirect_stdout

    from jobs.cli import main

    out = tmp_path_factory.mktemp("out")
    db = out / "store" / "mlflow.db"
    db.parent.mkdir()
    argv = ["validate", "--data", str(box_set), "-o", str(out), "--target-fpr", "0.05", "--write-config",
            str(out / "calibration.yaml"), "--tracking-uri", f"sqlite:///{db}", "--controls"]
    if importlib.util.find_spec("mlflow") is None:  # the `validate` extra is missing: check the rest anyway
        argv.append("--no-mlflow")
    for s in FAST:
        argv += ["--set", s]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0
    stdout = buf.getvalue()
    return out, json.loads(stdout.strip().splitlines()[-1]), stdout, db


def test_outputs_written(validated, box_set):
    out, summary, _, _ = validated
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["file"] for p in preds] == [f"images/{n}" for n in ("a.png", "b.png", "c.png", "neg1.png", "neg2.png")]
    for p in preds:
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"])
        assert all(s >= 0.2 for s in p["scores"])  # everything above the score floor, re-scorable
    m = json.loads((out / "metrics.json").read_text())
    face = m["detection"]["face"]
    assert face["n_gt"] == 4 and face["n_images"] == 5
    # clear 100-130 px faces: all found at the operating threshold, all blurred beyond recognition
    assert face["at_threshold"]["recall"] == 1.0
    assert face["ap"] == pytest.approx(1.0)
    assert m["leak"]["face"] == {**m["leak"]["face"], "n_evaluated": 4, "n_leaked": 0, "leak_rate": 0.0}
    assert m["over_masking"] < 0.05
    assert m["pipeline"]["operating_thresholds"] == {"face": _default_face_threshold()}
    assert (out / "per_image.csv").read_text().count("\n") == 6
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "pr_curve.png").stat().st_size > 1000
    assert summary["face"]["recall"] == 1.0 and summary["face"]["leak_rate"] == 0.0


def test_controls_and_size_bands_reported(validated):
    """--controls: the leak metric's controls on the same images (re-encode leaks all, fill and blur none)."""
    out, summary, _, _ = validated
    m = json.loads((out / "metrics.json").read_text())
    ctl = m["controls"]["face"]
    assert ctl["reencode"]["n_evaluated"] == 4
    assert ctl["reencode"]["leak_rate"] == 1.0 and ctl["fill"]["leak_rate"] == 0.0 and ctl["blur"]["leak_rate"] == 0.0
    assert set(ctl["blur"]["by_size"]) == {"10-24", "24-64", "64+"}
    assert summary["face"]["controls"] == {"reencode": 1.0, "fill": 0.0, "blur": 0.0}
    bands = m["leak"]["face"]["by_size"]
    assert sum(b["n_evaluated"] for b in bands.values()) == 4
    assert set(summary["face"]["leak_by_size"]) == {"10-24", "24-64", "64+"}


def _default_face_threshold() -> float:
    return AnonConfig().detectors["face"].params["threshold"]


def test_summary_is_last_stdout_line(validated):
    out, summary, stdout, _ = validated
    last = stdout.strip().splitlines()[-1]
    assert json.loads(last) == summary
    assert summary["out"] == str(out.resolve())


def test_mlflow_run_has_metrics_params_and_plots(validated):
    mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[validate]'")

    out, summary, _, db = validated
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["face.recall"] == 1.0
    assert run.data.metrics["face.leak_rate"] == 0.0
    assert "face.ap" in run.data.metrics and "face.calibrated_threshold" in run.data.metrics
    p = run.data.params
    default = AnonConfig().detectors["face"].params
    first = default["model"] if isinstance(default["model"], str) else default["model"][0]
    assert p["model.face"].startswith(first) and float(p["threshold.face"]) == default["threshold"]
    assert p["config_hash"] == summary["config_hash"] and p["git_commit"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pr_curve.png", "metrics.json", "per_image.csv", "predictions.jsonl", "calibration.yaml"} <= names
    # artifacts live beside the database, not in the working directory
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(db.parent)


def test_target_fpr_picks_threshold(validated):
    out, summary, _, _ = validated
    m = json.loads((out / "metrics.json").read_text())
    cal = m["calibration"]["face"]
    curve = m["detection"]["face"]["pr_curve"]
    ok = [t for t, f in zip(curve["threshold"], curve["fpr"]) if f is not None and f <= 0.05]
    assert cal["threshold"] == min(ok)  # the lowest threshold meeting the target
    assert cal["fpr"] <= 0.05 and cal["recall"] == 1.0
    assert summary["face"]["calibrated"]["threshold"] == cal["threshold"]


def test_write_config_round_trips(validated, tmp_path, monkeypatch):
    from jobs.config import conf_dir, load_config
    from jobs.validate import config_overrides

    out, summary, _, _ = validated
    path = out / "calibration.yaml"
    want = round(summary["face"]["calibrated"]["threshold"], 4)
    sets = config_overrides(path)
    assert sets == [f"detectors.face.params.threshold={want}"]
    assert f"--set detectors.face.params.threshold={want}" in path.read_text()
    assert load_config(sets).detectors["face"].params["threshold"] == want
    # and as a conf group: conf/calibration/<name>.yaml selected with --set +calibration=<name>
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "calibration").mkdir(exist_ok=True)
    shutil.copy(path, conf / "calibration" / "faces.yaml")
    monkeypatch.setenv("ANON_CONF_DIR", str(conf))
    cfg = load_config(["+calibration=faces"])
    assert cfg.detectors["face"].params["threshold"] == want
    assert cfg.detectors["face"].params["model"] == AnonConfig().detectors["face"].params["model"]  # rest kept


def test_video_sequence(tmp_path, astronaut):
    """MOT layout: frames run in order through detection + the mask scheduler; frame-level leak rate."""
    import subprocess
    import sys

    seq = tmp_path / "face_video" / "seq-1"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    head = astronaut[HEAD[1]:HEAD[3], HEAD[0]:HEAD[2]]
    lines = []
    for f in range(1, 7):
        img = _canvas(320, 240, 0)
        b = _paste(img, head, 20 + 8 * f, 20, 0.7)
        if f == 4:  # a frame where the face is gone (cut-away): nothing to leak
            img = _canvas(320, 240, 0)
        else:
            lines.append(f"{f},1,{b[0]:.1f},{b[1]:.1f},{b[2] - b[0]:.1f},{b[3] - b[1]:.1f},1,1,1")
        Image.fromarray(img).save(seq / "img1" / f"{f:06d}.jpg", quality=95)
    (seq / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=seq-1\nimDir=img1\nframeRate=25\nseqLength=6\n"
                                     "imWidth=320\nimHeight=240\nimExt=.jpg\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "jobs" / "validate.py"),
           "--data", str(tmp_path / "face_video"), "-o", str(out), "--no-mlflow"]
    for s in FAST:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "video"
    m = json.loads((out / "metrics.json").read_text())
    v = m["video"]["tracked"]
    assert v["n_frames"] == 6 and v["n_evaluated"] == 5
    assert v["leak_rate"] == 0.0 and v["max_longest_leak_run"] == 0
    assert m["detection"]["face"]["at_threshold"]["recall"] == 1.0
    assert m["iou"] == 0.3  # loose YTF-style boxes: video sets match at IoU 0.3 by default
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    # predictions are the analysed frames (with video.roi_every > 1 the frames between are interpolated), in order
    got = [p["frame"] for p in preds]
    assert got == sorted(got) and got[0] == 1 and got[-1] == 6
    assert (out / "per_image.csv").read_text().count("\n") == 7  # but every frame is scored as published


def test_dataset_errors(tmp_path):
    from jobs.validate import discover

    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "missing")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "annotations.jsonl").write_text("")
    with pytest.raises(ValueError, match="--classes"):
        discover(tmp_path / "stuff")
    assert discover(tmp_path / "stuff", ["plate"]).classes == ["plate"]


def test_discover_coco(tmp_path):
    from jobs.validate import discover

    coco = {"images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 80},
                       {"id": 2, "file_name": "y.jpg", "width": 100, "height": 80}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "iscrowd": 0},
                            {"image_id": 1, "category_id": 1, "bbox": [50, 5, 30, 30], "iscrowd": 1},
                            {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0}]}
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    ds = discover(tmp_path, ["person"])
    assert ds.kind == "coco" and ds.classes == ["person"]
    assert [len(g.boxes) for g in ds.images] == [1, 0]  # the car image is a person negative
    assert ds.images[0].ignore.tolist() == [[50, 5, 80, 35]]
    assert ds.images[0].path == str((tmp_path / "images" / "x.jpg").resolve())
