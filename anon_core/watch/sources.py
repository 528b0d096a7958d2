"""Where a watcher learns about objects: a full listing per poll, or a queue of storage events."""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote_plus

import fsspec

from anon_core.media.probe import MEDIA_EXTENSIONS
from anon_core.storage import filesystem, is_local, join, write_atomic
from anon_core.watch.settings import OWN_DIRS, TEMP_RE

log = logging.getLogger("anon.watch")


@dataclass(frozen=True)
class ObjectInfo:
    rel: str  # key relative to the input root ("/" separated)
    path: str  # full path for the input filesystem
    size: int
    version: str  # ETag when the store has one, else size + mtime (ns): changes whenever the bytes may have
    mtime: float | None = None  # epoch seconds when storage says the object was written (arrival time)


@dataclass
class Poll:
    objects: dict[str, ObjectInfo]  # objects the source reports present (all of them when `complete`)
    deleted: set[str] = field(default_factory=set)  # keys reported deleted (event sources)
    root_missing: bool = False  # the watched prefix does not exist (an object store's empty prefix, or a lost mount)


class ChangeSource(Protocol):
    """Where the watcher learns about objects. `complete` sources return the whole prefix on every poll (absence
    means deletion; objects must settle over two polls); event sources return what changed, complete objects
    only (a storage event is emitted when an upload has finished)."""

    complete: bool

    def poll(self) -> Poll: ...

    def commit(self) -> None:
        """Everything returned so far is handled (rows durable): an event source may forget it."""


def version_of(info: dict) -> tuple[str, float | None]:
    """(version token, mtime epoch seconds) from an fsspec info dict (local files, s3fs, gcsfs, ...)."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    mtime: Any = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    elif isinstance(mtime, str):
        try:
            mtime = datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
        except ValueError:
            mtime = None
    mtime = float(mtime) if mtime is not None else None
    if etag:
        return f"etag:{str(etag).strip(chr(34))}", mtime
    ns = info.get("mtime_ns") or (int(mtime * 1e9) if mtime is not None else 0)
    return f"size:{int(info.get('size') or 0)}:mtime:{ns}", mtime


def safe_key(rel: str) -> bool:
    """A relative key that stays below its root: not empty, not absolute, no `.`/`..`/empty segments, no NUL.
    Keys also arrive from untrusted places (queue events, erasure requests), and a key is joined to the output
    root to publish or delete."""
    return bool(rel) and not rel.startswith("/") and "\x00" not in rel \
        and all(seg not in ("", ".", "..") for seg in rel.split("/"))


def is_candidate(rel: str, skip_dirs: Iterable[str] = OWN_DIRS) -> bool:
    """A media file that is not an upload in progress, not inside one of our own folders, and whose key stays
    below the root."""
    if not safe_key(rel):
        return False
    parts = rel.split("/")
    if any(p in skip_dirs for p in parts[:-1]) or TEMP_RE.search(rel):
        return False
    return posixpath.splitext(rel)[1].lower() in MEDIA_EXTENSIONS


def rel_key(fs: fsspec.AbstractFileSystem, root: str, path: str) -> str:
    """path relative to root, "/" separated."""
    rel = os.path.relpath(path, root) if is_local(fs) else posixpath.relpath(path, root.rstrip("/"))
    return rel.replace(os.sep, "/")


def list_all(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """Every file under root with its info, as storage has it now."""
    if not is_local(fs):
        fs.invalidate_cache(root)  # s3fs & co. cache listings; a watcher must see the store as it is now
    return fs.find(root, detail=True, withdirs=False)


class PollingSource:
    """Lists the whole prefix on each poll (works on every fsspec store; cost grows with the prefix)."""

    complete = True

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, skip: Callable[[str], bool] | None = None):
        self.fs, self.root, self.skip = fs, root.rstrip("/") or "/", skip

    def poll(self) -> Poll:
        if not self.fs.exists(self.root):
            return Poll({}, root_missing=True)
        objects = {}
        for path, info in list_all(self.fs, self.root).items():
            rel = rel_key(self.fs, self.root, path)
            if not is_candidate(rel) or (self.skip and self.skip(path)):
                continue
            ver, mtime = version_of(info)
            objects[rel] = ObjectInfo(rel, path, int(info.get("size") or 0), ver, mtime)
        return Poll(objects)

    def commit(self) -> None:
        pass


class FileQueueSource:
    """Storage events from JSONL files in a folder (or fsspec prefix): the shape an S3 bucket notification takes
    after a small forwarder drains SQS/Kafka into files. Each line is either an S3 notification
    (`{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": ..., "size": ..., "eTag": ...}}}]}`)
    or a short form `{"event": "created"|"deleted", "key": "<key relative to the input>"}`.

    Delivery is at least once: offsets (lines consumed per file) are saved to a state file only at `commit`,
    after the watcher's rows are durable; a replayed event names a (key, version) already done and is dropped.
    """

    complete = False

    def __init__(self, in_fs: fsspec.AbstractFileSystem, in_root: str, queue_uri: str, state_path: str,
                 storage_options: dict | None = None, max_events: int = 1000):
        self.in_fs, self.in_root = in_fs, in_root.rstrip("/")
        self.q_fs, self.q_root = filesystem(queue_uri, **(storage_options or {}))
        self.st_fs, self.state_path = filesystem(state_path, **(storage_options or {}))
        self.max_events = max_events  # backpressure: events beyond this wait in the queue, unread
        self.offsets: dict[str, int] = {}
        if self.st_fs.exists(self.state_path):
            self.offsets = json.loads(self.st_fs.cat_file(self.state_path))
        self.pending_offsets = dict(self.offsets)

    def _key(self, key: str) -> str:
        key = unquote_plus(key)  # S3 notifications URL-encode keys
        prefix = self.in_root.split("/", 1)[1] + "/" if not is_local(self.in_fs) and "/" in self.in_root else ""
        return key[len(prefix):] if prefix and key.startswith(prefix) else key.lstrip("/")

    def _events(self, line: str) -> list[tuple[str, str, dict]]:
        d = json.loads(line)
        if "Records" in d:
            out = []
            for r in d["Records"]:
                obj = r.get("s3", {}).get("object", {})
                kind = "deleted" if str(r.get("eventName", "")).startswith("ObjectRemoved") else "created"
                out.append((kind, self._key(obj.get("key", "")), obj))
            return out
        return [("deleted" if d.get("event") in ("deleted", "removed") else "created", self._key(d["key"]), d)]

    def _read(self) -> tuple[dict[str, dict], set[str]]:
        """Events not yet consumed (at most max_events): (created key -> event object, deleted keys)."""
        created: dict[str, dict] = {}
        deleted: set[str] = set()
        n = 0
        for path in sorted(self.q_fs.find(self.q_root)):
            if not path.endswith(".jsonl") or TEMP_RE.search(path):
                continue
            name = rel_key(self.q_fs, self.q_root, path)
            lines = self.q_fs.cat_file(path).decode().splitlines()
            start = self.pending_offsets.get(name, 0)
            for i in range(start, len(lines)):
                if n >= self.max_events:
                    break
                if lines[i].strip():
                    try:
                        for kind, key, obj in self._events(lines[i]):
                            if kind == "deleted":
                                deleted.add(key)
                                created.pop(key, None)
                            else:
                                created[key] = obj
                                deleted.discard(key)
                    except (ValueError, KeyError) as exc:
                        log.warning("queue %s line %d unreadable (%s): skipped", name, i + 1, exc)
                n += 1
                self.pending_offsets[name] = i + 1
        return created, deleted

    def poll(self) -> Poll:
        if not self.q_fs.exists(self.q_root):
            return Poll({})
        if not is_local(self.q_fs):
            self.q_fs.invalidate_cache(self.q_root)
        created, deleted = self._read()
        objects = {}
        for rel in created:
            if not is_candidate(rel):  # also refuses keys that leave the input root ("../x.jpg")
                continue
            path = join(self.in_root, rel)
            try:  # the event may be stale (object replaced or deleted since): ask storage for the truth
                info = self.in_fs.info(path)
            except FileNotFoundError:
                deleted.add(rel)
                continue
            ver, mtime = version_of(info)
            objects[rel] = ObjectInfo(rel, path, int(info.get("size") or 0), ver, mtime)
        return Poll(objects, {k for k in deleted if safe_key(k)})

    def commit(self) -> None:
        if self.pending_offsets != self.offsets:
            write_atomic(self.st_fs, self.state_path, json.dumps(self.pending_offsets, sort_keys=True).encode())
            self.offsets = dict(self.pending_offsets)


__all__ = ["ChangeSource", "FileQueueSource", "ObjectInfo", "Poll", "PollingSource", "is_candidate", "list_all",
           "rel_key", "safe_key", "version_of"]
