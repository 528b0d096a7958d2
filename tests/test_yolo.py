"""Bring-your-own YOLO: a tiny YOLOv8n trained inside the test (architecture YAML from the ultralytics package, no
weights download) on generated coloured rectangles, logged to MLflow by jobs/train.py, loaded back through the
`yolo` detector from a local .pt, its ONNX export, a file:// URL and the MLflow registry URI.

Two epochs from random init do not make a useful detector: the checks are on the plumbing (class mapping, frame
coordinates, backends agreeing, offline guards), at a score floor low enough that boxes come back.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                reason="ultralytics not installed: pip install -e '.[yolo]'")

CLASSES = ("plate", "person")
SIZE = 64


def make_rectangles(root: Path, n: int = 16, seed: int = 0) -> Path:
    """n images with one red ("plate") and one blue ("person") rectangle each, in our JSONL format."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.integers(170, 230, (SIZE, SIZE, 3), dtype=np.uint8)
        boxes = []
        for col in ((230, 30, 30), (30, 30, 230)):
            w, h = (int(v) for v in rng.integers(SIZE // 5, SIZE // 2, 2))
            x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
            img[y : y + h, x : x + w] = col
            boxes.append([x, y, x + w, y + h])
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        rows.append({"file": f"images/{i:03d}.png", "width": SIZE, "height": SIZE, "boxes": boxes,
                     "labels": list(CLASSES)})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jobs.train import main as train_main

    root = tmp_path_factory.mktemp("yolo")
    data = make_rectangles(root / "data")
    summary = train_main(["--data", str(data), "-o", str(root / "out"), "--model", "yolov8n.yaml", "--epochs", "2",
                          "--imgsz", str(SIZE), "--batch", "8", "--classes", ",".join(CLASSES), "--val-fraction",
                          "0.25", "--export", "onnx", "--register", "toy-rectangles"])
    return root, data, summary


@pytest.fixture(scope="module")
def frames(trained):
    _, data, _ = trained
    return [np.asarray(Image.open(data / "images" / f"{i:03d}.png").convert("RGB")) for i in range(3)]


def _check(dets, names):
    for d in dets:
        assert len(d) > 0
        assert set(d.labels.astype(str)) <= set(names)
        assert (d.xyxy >= -1).all() and (d.xyxy <= SIZE + 1).all()  # frame pixels, not network pixels
        assert (d.scores >= 1e-4).all()


def test_train_logs_to_mlflow(trained):
    root, _, summary = trained
    assert Path(summary["weights"]).is_file() and Path(summary["export"]).suffix == ".onnx"
    ml = summary["mlflow"]
    assert ml["tracking_uri"].startswith("sqlite:///") and ml["model_uri"] == "models:/toy-rectangles/1"
    import mlflow

    mlflow.set_tracking_uri(ml["tracking_uri"])
    run = mlflow.get_run(ml["run_id"])
    assert run.data.params["epochs"] == "2" and run.data.params["imgsz"] == str(SIZE)
    assert any(k.startswith("metrics.mAP50") for k in run.data.metrics), run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(ml["run_id"], "weights")}
    assert {"weights/best.pt", "weights/best.onnx"} <= arts
    # the JSONL set became a YOLO dataset with our class order
    names = json.loads((root / "out" / "dataset" / "data.yaml").read_text())["names"]
    assert names == {"0": "plate", "1": "person"}


def test_detector_pt_and_onnx_agree(trained, frames):
    from anon_core.detectors import create_detector

    _, _, summary = trained
    out = {}
    for key in ("weights", "export"):
        det = create_detector("yolo", weights=summary[key], classes={0: "plate", 1: "person"}, threshold=1e-4,
                              imgsz=SIZE, max_det=10, device="cpu")
        assert det.classes == CLASSES
        out[key] = det.detect(frames)
        _check(out[key], CLASSES)
        assert det.info().name.startswith("yolo:")
    # same network, two runtimes: the top box agrees
    for a, b in zip(out["weights"], out["export"]):
        np.testing.assert_allclose(a.xyxy[0], b.xyxy[0], atol=1.0)
        assert abs(float(a.scores[0]) - float(b.scores[0])) < 1e-3


def test_class_mapping_drops_unmapped_ids(trained, frames):
    from anon_core.detectors.yolo import YoloDetector

    _, _, summary = trained
    det = YoloDetector(summary["export"], classes={"1": "person"}, threshold=1e-4, imgsz=SIZE, device="cpu")
    assert det.classes == ("person",)
    dets = det.detect(frames)
    assert all(set(d.labels.astype(str)) <= {"person"} for d in dets)
    # no mapping: the model's own names (the ones jobs/train.py gave it)
    assert set(YoloDetector(summary["export"], device="cpu").classes) == set(CLASSES)


def test_fsspec_and_mlflow_uris(trained, frames):
    from anon_core.detectors.yolo import YoloDetector

    _, _, summary = trained
    det = YoloDetector(Path(summary["export"]).as_uri(), classes={0: "plate", 1: "person"}, threshold=1e-4,
                       imgsz=SIZE, device="cpu")
    _check(det.detect(frames[:1]), CLASSES)
    os.environ["MLFLOW_TRACKING_URI"] = summary["mlflow"]["tracking_uri"]
    try:
        det = YoloDetector(summary["mlflow"]["model_uri"], classes={0: "plate", 1: "person"}, threshold=1e-4,
                           imgsz=SIZE, device="cpu")
        _check(det.detect(frames[:1]), CLASSES)
        assert det._path is not None and det._path.name == "best.pt"  # the .pt is preferred over the export
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_never_downloads_a_model_name(tmp_path, monkeypatch):
    from anon_core.detectors.yolo import YoloDetector, fetch_weights

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        fetch_weights("yolov8n.pt")
    det = YoloDetector("yolov8n.pt", classes={0: "person"})  # constructing is lazy; first use fails, offline
    with pytest.raises(FileNotFoundError):
        det.detect([np.zeros((32, 32, 3), np.uint8)])
    assert not (tmp_path / "yolov8n.pt").exists()
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="not YOLO weights"):
        fetch_weights(str(bad))


def test_offline_environment():
    from anon_core.detectors.yolo import offline_ultralytics

    offline_ultralytics()
    from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert not ONLINE and not SETTINGS["sync"] and not SETTINGS["mlflow"]
    assert (USER_CONFIG_DIR / "Arial.ttf").is_file() and (USER_CONFIG_DIR / "Arial.Unicode.ttf").is_file()


def test_train_rejects_unknown_model_names(tmp_path):
    from jobs.train import resolve_model

    assert resolve_model("yolov8n.yaml") == "yolov8n.yaml"
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_model("yolov8n.pt")
