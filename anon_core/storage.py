"""fsspec helpers: list inputs, map them to outputs, write objects so no partial file is ever visible."""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid

import fsspec
from fsspec.core import url_to_fs

from anon_core.media.probe import MEDIA_EXTENSIONS


def filesystem(uri: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri, **storage_options)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def list_inputs(fs: fsspec.AbstractFileSystem, root: str, extensions=MEDIA_EXTENSIONS,
                exclude_dirs: tuple[str, ...] = ("_manifests",)) -> list[tuple[str, str]]:
    """(full path, path relative to root) for every media file under root (or root itself if a file)."""
    root = root.rstrip("/") or "/"
    if fs.isfile(root):
        return [(root, posixpath.basename(root))]
    out = []
    for path in sorted(fs.find(root)):
        rel = posixpath.relpath(path, root) if not is_local(fs) else os.path.relpath(path, root)
        rel = rel.replace(os.sep, "/")
        parts = rel.split("/")
        if any(p in exclude_dirs or p.startswith(".") for p in parts):
            continue
        if posixpath.splitext(rel)[1].lower() in extensions:
            out.append((path, rel))
    return out


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def display_uri(user_uri: str, path: str) -> str:
    """Keep the user's protocol prefix (s3://...) on paths fsspec returns without it."""
    if "://" in user_uri and "://" not in path:
        return user_uri.split("://", 1)[0] + "://" + path
    return path


def sha256_stream(fs: fsspec.AbstractFileSystem, path: str, chunk: int = 8 << 20) -> tuple[str, int]:
    """(sha256 hex, size) of a stored object, read in chunks (never whole)."""
    h, n = hashlib.sha256(), 0
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def confined(fs: fsspec.AbstractFileSystem, root: str, path: str) -> bool:
    """True when `path` is strictly below `root` and, on a local disk, stays there with every symlink resolved
    and is not itself a symlink. Object stores have no symlinks; their keys are compared normalized."""
    if is_local(fs):
        real_root = os.path.realpath(root)
        return os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep) and not os.path.islink(path)
    base = posixpath.normpath(root.rstrip("/"))
    return posixpath.normpath(path).startswith(base + "/") and ".." not in path.split("/")


def _publish(fs: fsspec.AbstractFileSystem, path: str, fill_local, upload) -> None:
    """Local: fill a hidden temp file in the same directory, fsync, rename (atomic on POSIX). Object
    stores: one PUT, which becomes visible only when complete. Either way no partial file is ever seen."""
    parent = os.path.dirname(path) if is_local(fs) else posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(fs):
        upload()
        return
    # A short fixed-length temp name: the final name may be up to the file system's 255 bytes itself.
    tmp = os.path.join(parent, f".anon-{uuid.uuid4().hex[:16]}.partial")
    try:
        fill_local(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Publish bytes at `path` (see `_publish`)."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _publish(fs, path, fill, lambda: fs.pipe_file(path, data))


def put_atomic(fs: fsspec.AbstractFileSystem, local_path: str, path: str) -> None:
    """Publish a finished local file at `path` (see `_publish`)."""
    import shutil

    _publish(fs, path, lambda tmp: shutil.copyfile(local_path, tmp), lambda: fs.put_file(local_path, path))
