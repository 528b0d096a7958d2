"""Bring-your-own YOLOv8 (ultralytics): users' weights as a first-class detector, fully offline.

Weights: a `.pt`, `.onnx` file or an OpenVINO IR folder (`*_openvino_model/`), given as a local path, an fsspec
URL (`s3://...`, `file://...`; copied into a private temporary folder first, because ultralytics opens files by
path and picks the backend from the suffix) or an MLflow model URI (`models:/name/version`, `runs:/<id>/path`,
downloaded with MLflow's artifact client by the resolver `jobs/mlflow_weights.py` registers: the core imports no
MLflow). Class ids map to our class names in config:

    detectors:
      plate: {name: yolo, params: {weights: models:/plates/3, classes: {0: plate}, threshold: 0.3}}

Ids missing from the mapping are dropped; without a mapping the model's own names are used.

ultralytics is kept offline: `YOLO_OFFLINE=1` (no connectivity probe, no telemetry), `YOLO_AUTOINSTALL=0` (no pip
runs), a project-owned `YOLO_CONFIG_DIR` (settings and fonts live in the repo cache, not in ~/.config) holding a
copy of a local TTF under the names ultralytics would otherwise download, and a weights name is only ever passed
to `YOLO()` once it is an existing local file: a bare `yolov8n.pt` would make ultralytics download it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.weights import ModelInfo, package_version

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHT_SUFFIXES = (".pt", ".onnx")
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # what ultralytics' plotting asks for (and would download)
_INTEGRATIONS_OFF = {k: False for k in ("sync", "mlflow", "clearml", "comet", "dvc", "raytune", "wandb",
                                        "tensorboard", "vscode_msg", "openvino_msg")}


def config_dir() -> Path:
    return Path(os.environ.get("ANON_YOLO_CONFIG_DIR") or REPO_ROOT / ".cache" / "ultralytics")


def _local_font() -> Path | None:
    """A TTF that is already on this machine: matplotlib ships DejaVuSans; system fonts as a fallback."""
    candidates: list[Path] = []
    try:
        import matplotlib

        candidates.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    except ImportError:
        pass
    candidates += [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
                   Path("/usr/share/fonts/dejavu/DejaVuSans.ttf")]
    return next((p for p in candidates if p.is_file()), None)


def offline_ultralytics():
    """Import ultralytics with every network path closed; returns the module. Idempotent."""
    from anon_core.offline import go_offline

    go_offline()  # YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0 and the other libraries' switches (anon_core/offline.py)
    os.environ.setdefault("YOLO_VERBOSE", "0")
    cdir = config_dir()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cdir))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    try:
        import ultralytics
        from ultralytics.utils import SETTINGS, USER_CONFIG_DIR
    except ImportError as e:
        raise ImportError("the yolo detector needs ultralytics: pip install -e '.[yolo]' "
                          "(then reinstall opencv-python-headless<5, see models/yolo.md)") from e
    # USER_CONFIG_DIR is fixed at ultralytics' first import (ours, unless someone imported it earlier)
    font = _local_font()
    for name in FONT_NAMES:
        if font is not None and not (Path(USER_CONFIG_DIR) / name).exists():
            shutil.copyfile(font, Path(USER_CONFIG_DIR) / name)  # plotting then never tries to fetch Arial
    if any(SETTINGS.get(k) for k in _INTEGRATIONS_OFF):
        # ultralytics would otherwise log to any installed tracker (MLflow included) and send usage events
        SETTINGS.update(_INTEGRATIONS_OFF)
    return ultralytics


def _is_weights(p: Path) -> bool:
    return (p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES) or (p.is_dir() and any(p.glob("*.xml")))


def _find_weights(root: Path) -> Path:
    """The one weights file/IR folder inside a downloaded MLflow artifact folder (best.pt preferred)."""
    if _is_weights(root):
        return root
    found = [p for p in sorted(root.rglob("*")) if _is_weights(p) and not p.name.startswith(".")]
    if not found:
        raise FileNotFoundError(f"no YOLO weights (.pt, .onnx, OpenVINO IR folder) under {root}")
    pref = [p for p in found if p.name == "best.pt"] or [p for p in found if p.suffix == ".pt"] or found
    return pref[0]


def fetch_weights(uri: str, cache: str | Path | None = None) -> Path:
    """A local path ultralytics can open for `uri`. Never downloads from anywhere `uri` does not name."""
    from anon_core.weights import resolver_for

    resolver = resolver_for(uri)
    if resolver is not None:  # e.g. MLflow's models:/ (registered by jobs/, see anon_core/weights.py)
        return _find_weights(resolver(uri, Path(tempfile.mkdtemp(prefix="anon-yolo-resolved-", dir=cache))))
    if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        raise FileNotFoundError(f"YOLO weights {uri!r}: no resolver for MLflow URIs is registered (it comes with the "
                                f"`jobs` package: `import jobs`, or register one with anon_core.weights."
                                f"register_resolver)")
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        name = Path(path.rstrip("/")).name
        # a private folder per URI: ultralytics needs a real path with the right suffix
        dst = Path(tempfile.mkdtemp(prefix="anon-yolo-", dir=cache)) / name
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(dst), recursive=True)
        else:
            fs.get(path, str(dst))
        p = dst
    else:
        p = Path(uri.removeprefix("file://")).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"YOLO weights {uri!r} not found. Give a local path, an fsspec URL or an MLflow "
                                f"model URI: model names are never downloaded (anon runs offline)")
    if not _is_weights(p):
        raise ValueError(f"{uri!r} is not YOLO weights: expected .pt, .onnx or an OpenVINO IR folder (with .xml)")
    return p


def _class_map(classes: Mapping[Any, str] | Sequence[str] | None) -> dict[int, str] | None:
    if classes is None:
        return None
    if isinstance(classes, Mapping):
        return {int(k): str(v) for k, v in classes.items()}  # YAML/Hydra may give "0" or 0
    return {i: str(v) for i, v in enumerate(classes)}


class YoloDetector(Detector):
    """An ultralytics YOLO model (detect or segment task) behind the detector protocol."""

    def __init__(
        self,
        weights: str,
        classes: Mapping[Any, str] | Sequence[str] | None = None,
        threshold: float = 0.25,
        iou: float = 0.6,
        imgsz: int = 640,
        max_det: int = 300,
        device: str = "auto",
        half: bool = False,
        batch_size: int = 8,
        masks: bool = False,
        threads: int = 0,
    ):
        if not weights:
            raise ValueError("the yolo detector needs `weights` (a path, fsspec URL or MLflow model URI)")
        self.uri, self.threshold, self.iou, self.imgsz = str(weights), float(threshold), float(iou), int(imgsz)
        self.max_det, self.half, self.batch_size, self.masks = int(max_det), bool(half), int(batch_size), bool(masks)
        self.device = device
        self.threads = int(threads)
        self.class_map = _class_map(classes)
        self._model: Any = None
        self._path: Path | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        if self.class_map is not None:
            return tuple(dict.fromkeys(self.class_map.values()))
        return tuple(dict.fromkeys(str(v) for v in self.model.names.values()))

    @property
    def model(self) -> Any:
        self.ensure_loaded()
        return self._model

    def load(self) -> None:
        offline_ultralytics()
        from ultralytics import YOLO

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._path = fetch_weights(self.uri)
        self._model = YOLO(str(self._path), task="segment" if self.masks else "detect")

    def _torch_device(self) -> str:
        if self.device in ("cpu", "cuda", "gpu") or str(self.device).startswith("cuda:"):
            return "cuda:0" if self.device == "gpu" else self.device
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"

    def model_infos(self) -> list[ModelInfo]:
        assert self._path is not None
        h = hashlib.sha256()
        files = [self._path] if self._path.is_file() else sorted(p for p in self._path.rglob("*") if p.is_file())
        for f in files:
            h.update(f.read_bytes())
        return [ModelInfo(f"yolo:{self._path.name}", f"ultralytics@{package_version('ultralytics')}", h.hexdigest(),
                          self.uri)]

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        model = self._model
        out: list[Detections] = []
        for k in range(0, len(frames), self.batch_size):
            # ultralytics takes numpy images as BGR (OpenCV order); ours are RGB
            chunk = [np.ascontiguousarray(f[..., ::-1]) for f in frames[k : k + self.batch_size]]
            results = model.predict(chunk, conf=min_score, iou=self.iou, imgsz=self.imgsz, max_det=self.max_det,
                                    device=self._torch_device(), half=self.half, verbose=False)
            for frame, r in zip(chunk, results):
                out.append(self._convert(r, frame.shape[:2]))
        return out

    def _convert(self, r: Any, shape: tuple[int, int]) -> Detections:
        if r.boxes is None or not len(r.boxes):
            return Detections.empty()
        xyxy = r.boxes.xyxy.cpu().numpy().astype(np.float32)
        scores = r.boxes.conf.cpu().numpy().astype(np.float32)
        ids = r.boxes.cls.cpu().numpy().astype(int)
        names = self.class_map if self.class_map is not None else {int(i): str(n) for i, n in r.names.items()}
        keep = np.array([i in names for i in ids], bool)
        labels = np.array([names.get(int(i), "") for i in ids], object)
        masks = None
        if self.masks and getattr(r, "masks", None) is not None:
            import cv2

            masks = []
            for poly in r.masks.xy:  # polygons in frame pixels (the raw masks are in letterboxed network pixels)
                m = np.zeros(shape, np.uint8)
                if len(poly):
                    cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
                masks.append(m.astype(bool))
        d = Detections(xyxy, scores, labels, masks=masks)
        return d[keep]


@register_detector("yolo")
def _yolo(**params) -> YoloDetector:
    return YoloDetector(**params)
