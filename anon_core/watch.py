"""Continuous mode: watch an input prefix, anonymize each new or changed object exactly once, propagate erasure.

The watcher is a loop over a `ChangeSource` (a full listing per poll by default; a queue of storage events when
configured) feeding a bounded thread pool that runs the CLI's own per-asset code (`runner.process_asset`).

State is the Parquet manifest itself: every batch of finished assets becomes one part file
`<manifest_root>/run_id=<run>/part-<seq>.parquet` with the shared `audit.SCHEMA`; the watch-specific fields
(the object's version token, arrival time, latency, erasure details) ride in the `extra_json` column. On start
the set of done (key, version) pairs is recomputed from those parts, so there is no database and no other state
that could disagree with the audit log. Side files under `<manifest_root>/_state/` (queue offsets) and
`_status.json` are conveniences: losing them costs re-reading, never a duplicate.

Exactly once, in short (the full argument is in `Watcher`'s docstring):
- an object is identified by (relative key, version), the version being its ETag, or size + mtime;
- an object is processed only after it looked the same on two polls at least `settle_s` apart, and names that
  uploaders use for partial files are never considered;
- outputs are published atomically and only when they differ from what is already at the target, and a
  manifest row is written only after its output is durable;
- a crash between an output and its row re-runs that asset on restart; the re-run finds identical bytes at the
  target and publishes nothing, then writes the one row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import posixpath
import re
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import fsspec

from anon_core.audit import AuditRecord, now, write_manifest
from anon_core.config import AnonConfig
from anon_core.media.probe import MEDIA_EXTENSIONS
from anon_core.storage import filesystem, is_local, join, put_atomic, write_atomic

log = logging.getLogger("anon.watch")
_HOST = platform.node()

# Failures worth another attempt inside the same run (same set as the archive job): a corrupt or unsupported
# file fails identically every time and is recorded at once.
RETRYABLE = {"storage", "internal", "resources"}
# Names uploaders give to files that are not finished yet (rsync, browsers, HDFS `put`, our own writers).
TEMP_PATTERNS = (r"(^|/)\.", r"\.partial$", r"\.tmp$", r"\.temp$", r"\.part$", r"\.crdownload$", r"_COPYING_",
                 r"\.filepart$", r"~$")
_TEMP_RE = re.compile("|".join(TEMP_PATTERNS), re.IGNORECASE)
REQUEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".txt")
DONE_SUFFIX = ".done.json"
ROW_COLUMNS = ["run_id", "relative_path", "status", "input_uri", "input_sha256", "input_size", "output_uri",
               "output_sha256", "output_size", "finished_at", "extra_json"]


# -- settings


@dataclass
class WatchSettings:
    input: str
    output: str
    manifest: str | None = None  # manifest root; None: <output>/_manifests/watch
    interval_s: float = 2.0  # time between polls
    settle_s: float = 0.0  # an object must also look unchanged for this long (on top of two equal polls)
    max_in_flight: int = 2  # assets being anonymized at once (the thread pool's size)
    # A manifest part is written when this many rows are waiting, or the oldest has waited flush_s. Larger parts
    # mean fewer files to read on restart; a crash redoes at most flush_s of work (without re-publishing it).
    batch_rows: int = 256
    flush_s: float = 5.0
    retries: int = 2  # extra attempts on storage/internal errors
    erasure: str | None = None  # erasure request prefix; None: <input>/_erasure ("" disables requests)
    erase_on_delete: bool = True  # a source object that disappears takes its output with it
    # Refuse to erase more than this fraction of the known outputs in one poll: an empty listing from a
    # mis-mounted volume or a wrong bucket must not wipe an archive. 1.0 disables the guard.
    erase_guard: float = 0.5
    source: str = "poll"  # poll | queue
    queue: str | None = None  # queue source: folder/URI of JSONL event files (S3 notification records)
    status_path: str | None = None  # status JSON; None: <manifest root>/_status.json
    storage_options: dict = field(default_factory=dict)
    once: bool = False  # process what is there (after it settles), then exit
    run_id: str | None = None

    @property
    def manifest_root(self) -> str:
        return self.manifest or join(self.output, "_manifests/watch")

    @property
    def erasure_root(self) -> str | None:
        if self.erasure == "":
            return None
        return self.erasure or join(self.input, "_erasure")


# -- what a source reports


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


def is_candidate(rel: str, skip_dirs: Iterable[str] = ("_manifests", "_erasure", "_temporary")) -> bool:
    """A media file that is not an upload in progress and not inside one of our own folders."""
    parts = rel.split("/")
    if any(p in skip_dirs for p in parts[:-1]) or _TEMP_RE.search(rel):
        return False
    return posixpath.splitext(rel)[1].lower() in MEDIA_EXTENSIONS


def _rel(fs: fsspec.AbstractFileSystem, root: str, path: str) -> str:
    rel = os.path.relpath(path, root) if is_local(fs) else posixpath.relpath(path, root.rstrip("/"))
    return rel.replace(os.sep, "/")


def _find(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
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
        for path, info in _find(self.fs, self.root).items():
            rel = _rel(self.fs, self.root, path)
            if rel.startswith("..") or not is_candidate(rel) or (self.skip and self.skip(path)):
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
        from urllib.parse import unquote_plus

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

    def poll(self) -> Poll:
        if not self.q_fs.exists(self.q_root):
            return Poll({})
        if not is_local(self.q_fs):
            self.q_fs.invalidate_cache(self.q_root)
        created: dict[str, dict] = {}
        deleted: set[str] = set()
        n = 0
        for path in sorted(self.q_fs.find(self.q_root)):
            if not path.endswith(".jsonl") or _TEMP_RE.search(path):
                continue
            name = _rel(self.q_fs, self.q_root, path)
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
        objects = {}
        for rel in created:
            if not is_candidate(rel):
                continue
            path = join(self.in_root, rel)
            try:  # the event may be stale (object replaced or deleted since): ask storage for the truth
                info = self.in_fs.info(path)
            except FileNotFoundError:
                deleted.add(rel)
                continue
            ver, mtime = version_of(info)
            objects[rel] = ObjectInfo(rel, path, int(info.get("size") or 0), ver, mtime)
        return Poll(objects, deleted)

    def commit(self) -> None:
        if self.pending_offsets != self.offsets:
            write_atomic(self.st_fs, self.state_path, json.dumps(self.pending_offsets, sort_keys=True).encode())
            self.offsets = dict(self.pending_offsets)


# -- state rebuilt from manifests


@dataclass
class Done:
    status: str  # ok | skipped | failed | erased
    version: str | None
    row: dict


def read_rows(fs: fsspec.AbstractFileSystem, root: str) -> list[dict]:
    """Every row of every manifest part under root (files or folders named `_*` / `.*` are not parts)."""
    import pyarrow.parquet as pq

    if not fs.exists(root):
        return []
    rows: list[dict] = []
    for path in sorted(fs.find(root)):
        tail = path[len(root.rstrip("/")):]
        if not path.endswith(".parquet") or "/_" in tail or "/." in tail:
            continue
        try:
            with fs.open(path, "rb") as fh:
                table = pq.read_table(fh, columns=ROW_COLUMNS)
        except Exception as exc:  # parts are written atomically; an unreadable one is damage, not a partial write
            log.warning("manifest part %s unreadable (%s): its assets will be processed again", path, exc)
            continue
        for i, row in enumerate(table.to_pylist()):
            row["_order"] = (row["finished_at"], path, i)
            rows.append(row)
    return rows


def load_state(rows: list[dict]) -> dict[str, Done]:
    """Latest row per key: that row's status and the version it was about."""
    state: dict[str, Done] = {}
    for row in sorted(rows, key=lambda r: r["_order"]):
        extra = json.loads(row["extra_json"]) if row.get("extra_json") else {}
        watch = extra.get("watch") or {}
        state[row["relative_path"]] = Done(row["status"], watch.get("version"), row)
    return state


# -- erasure requests


def parse_request(data: bytes, name: str) -> tuple[set[str], set[str]]:
    """(keys, sha256s) from an erasure request: JSONL (`{"key": ...}` / `{"sha256": ...}`), a JSON list of
    those, CSV with a `key`/`relative_path`/`sha256` header, or plain lines (64 hex digits read as a hash)."""
    keys: set[str] = set()
    hashes: set[str] = set()
    text = data.decode("utf-8-sig")

    def add(value: str, kind: str | None = None) -> None:
        value = value.strip()
        if not value:
            return
        if kind == "sha256" or (kind is None and re.fullmatch(r"[0-9a-fA-F]{64}", value)):
            hashes.add(value.lower())
        else:
            keys.add(value)

    def add_obj(d: Any) -> None:
        if isinstance(d, str):
            add(d)
            return
        for k in ("key", "relative_path", "input_key", "path"):
            if d.get(k):
                add(str(d[k]), "key")
        for k in ("sha256", "input_sha256"):
            if d.get(k):
                add(str(d[k]), "sha256")

    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames and {"key", "relative_path", "sha256", "input_sha256", "path"} & set(reader.fieldnames):
            for d in reader:
                add_obj(d)
        else:
            for line in text.splitlines():
                add(line.split(",")[0])
    elif name.endswith(".json"):
        d = json.loads(text)
        for item in d if isinstance(d, list) else d.get("items", [d]):
            add_obj(item)
    elif name.endswith(".jsonl"):
        for line in text.splitlines():
            if line.strip():
                add_obj(json.loads(line))
    else:
        for line in text.splitlines():
            add(line)
    return keys, hashes


# -- the watcher


@dataclass
class _Seen:
    obj: ObjectInfo
    first_seen: float  # wall clock (epoch) when this version was first listed
    polls: int = 1


@dataclass
class _Work:
    obj: ObjectInfo
    seen_at: float
    ready_at: float
    prev: Done | None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 4)


class Watcher:
    """Poll, settle, anonymize with a bounded pool, commit rows in batches, propagate erasure.

    Exactly-once argument. Let an asset be (key, version). (1) Nothing is processed before it settles, and
    temp names are never candidates, so a version is a finished object. (2) A worker publishes the output
    atomically (temp + rename / one PUT) before its row exists; if a file is already at the target it
    anonymizes into a private staging folder first and publishes only when the bytes differ. (3) Rows are
    appended to a part file written atomically after the outputs they describe are durable. (4) On start, done
    = the latest row per key; a (key, version) with a row is never submitted again, and a key is never in two
    workers at once. So: a crash after a row leaves nothing to redo; a crash between an output and its row
    re-runs the asset, which (anonymization being deterministic for a given input and config) finds the same
    bytes at the target and publishes nothing, then writes the single row; a crash before the output leaves
    only the run itself to redo. Misses: a listing lists every finished object, and the done set covers only
    rows, so anything without a row is processed on the next start.
    """

    def __init__(self, settings: WatchSettings, config: AnonConfig | None = None, anonymizer: Any = None,
                 source: ChangeSource | None = None, clock: Callable[[], float] = time.time):
        from anon_core.runner import new_run_id

        self.s = settings
        self.config = config or (anonymizer.config if anonymizer is not None else AnonConfig())
        if anonymizer is None:
            from anon_core.pipeline import Anonymizer

            anonymizer = Anonymizer(self.config)
        self.anonymizer = anonymizer
        self.clock = clock
        self.run_id = settings.run_id or "watch-" + new_run_id()
        opts = settings.storage_options
        self.in_fs, self.in_root = filesystem(settings.input, **opts)
        self.out_fs, self.out_root = filesystem(settings.output, **opts)
        self.man_fs, self.man_root = filesystem(settings.manifest_root, **opts)
        self.status_fs, self.status_path = filesystem(settings.status_path or join(settings.manifest_root,
                                                                                  "_status.json"), **opts)
        self.er_fs = self.er_root = None
        if settings.erasure_root:
            self.er_fs, self.er_root = filesystem(settings.erasure_root, skip_instance_cache=True, **opts)
        if self._inside(self.out_fs, self.out_root, self.in_fs, self.in_root):
            raise ValueError("the output must not be inside the watched input (outputs would be picked up again)")
        if source is None:
            if settings.source == "queue":
                if not settings.queue:
                    raise ValueError("source=queue needs a queue location")
                source = FileQueueSource(self.in_fs, self.in_root, settings.queue,
                                         join(settings.manifest_root, "_state/queue_offsets.json"), opts)
            elif settings.source == "poll":
                # Its own filesystem instance: s3fs rebuilds its listing cache during `find`, and a worker thread
                # asking the shared instance about a file in that moment would be told it does not exist.
                source = PollingSource(*filesystem(settings.input, skip_instance_cache=True, **opts))
            else:
                raise ValueError(f"unknown source {settings.source!r} (poll | queue)")
        self.source = source
        self.pool = ThreadPoolExecutor(max_workers=max(1, settings.max_in_flight), thread_name_prefix="anon-watch")
        self.lock = threading.Lock()
        self.wake = threading.Event()  # a worker finished: submit more without waiting for the next poll
        self.stopping = threading.Event()
        self.state: dict[str, Done] = {}
        self.seen: dict[str, _Seen] = {}  # candidates not yet settled or not yet submitted
        self.ready: dict[str, _Work] = {}  # settled, waiting for a worker (insertion order = arrival order)
        self.in_flight: dict[str, Future] = {}
        self.finished: list[AuditRecord] = []  # rows waiting for the next part file
        self.oldest_finished: float | None = None
        self.absent: dict[str, int] = {}  # known key -> consecutive polls it was missing from a complete listing
        self.requests_seen: dict[str, tuple[str, int]] = {}  # erasure request path -> (version, polls)
        self.part_seq = 0
        self.polls = 0
        self.counts = {"ok": 0, "failed": 0, "skipped": 0, "erased": 0, "republished_identical": 0}
        self.latencies: deque[float] = deque(maxlen=4096)
        self.done_times: deque[float] = deque(maxlen=4096)
        self.started = clock()
        self.last_error: str | None = None

    @staticmethod
    def _inside(out_fs, out_root: str, in_fs, in_root: str) -> bool:
        if type(out_fs) is not type(in_fs):
            return False
        a, b = out_root.rstrip("/") + "/", in_root.rstrip("/") + "/"
        return a.startswith(b)

    # -- public

    def stop(self) -> None:
        """Finish in-flight assets, write their rows, then return from `run` (safe from a signal handler)."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> dict:
        self._single_writer()
        self.recover()
        log.info("watch %s: %s -> %s (%d keys done), every %.1f s, %d in flight", self.run_id, self.s.input,
                 self.s.output, len(self.state), self.s.interval_s, self.s.max_in_flight)
        next_poll = 0.0
        next_status = 0.0
        try:
            while not self.stopping.is_set():
                t = time.monotonic()
                if t >= next_poll:
                    next_poll = t + self.s.interval_s
                    self.poll_once()
                self._submit()
                self._flush(force=False)
                if t >= next_status:
                    next_status = t + max(self.s.interval_s, 1.0)
                    self._report()
                if self.s.once and self._idle() and self.polls >= 2:
                    break
                self.wake.wait(timeout=max(0.01, min(next_poll, next_status) - time.monotonic()))
                self.wake.clear()
                self._collect()
        finally:
            self._drain()
        return self.status("stopped")

    # -- start-up

    def _single_writer(self) -> None:
        """Refuse to run beside a live watcher on the same output (two would publish the same assets twice).
        Best effort, from its status file: stale (no update for a few intervals), stopped, or a dead process on
        this host means it is gone."""
        period = max(self.s.interval_s, 1.0)
        deadline = time.monotonic() + 4 * period + 5
        while True:
            try:
                st = json.loads(self.status_fs.cat_file(self.status_path))
            except (FileNotFoundError, ValueError):
                return
            if st.get("state") == "stopped" or st.get("run_id") == self.run_id:
                return
            if st.get("host") == _HOST and not _alive(st.get("pid")):
                return
            age = self.clock() - datetime.fromisoformat(st["updated_at"]).timestamp()
            if age > 3 * period + 2:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"another watcher ({st.get('run_id')} on {st.get('host')}) is writing to "
                                   f"{self.s.output}; stop it first")
            time.sleep(period)

    def recover(self) -> None:
        """Rebuild done state from the manifest parts; nothing else is trusted."""
        rows = read_rows(self.man_fs, self.man_root)
        self.state = load_state(rows)
        for seq in (r["_order"][1] for r in rows if f"run_id={self.run_id}" in r["_order"][1]):
            m = re.search(r"part-(\d+)", seq)
            self.part_seq = max(self.part_seq, int(m.group(1)) + 1 if m else 0)

    # -- one poll

    def poll_once(self) -> None:
        try:
            poll = self.source.poll()
        except Exception as exc:  # storage hiccup: try again next interval, erase nothing
            self.last_error = f"poll failed: {type(exc).__name__}: {exc}"
            log.warning("%s", self.last_error)
            return
        if poll.root_missing and any(d.status in ("ok", "skipped") for d in self.state.values()):
            # Outputs exist, so the prefix did too: a lost mount or wrong bucket, not an empty archive. Erase nothing.
            self.last_error = "input prefix not found: not treating it as empty"
            log.warning("%s", self.last_error)
            return
        self.polls += 1
        t = self.clock()
        complete = self.source.complete
        with self.lock:
            for rel, obj in poll.objects.items():
                done = self.state.get(rel)
                if done is not None and done.version == obj.version:
                    continue
                if rel in self.in_flight:
                    continue  # a newer version is looked at again once the current one is done
                if rel in self.ready:
                    if self.ready[rel].obj.version != obj.version:  # replaced before a worker took it
                        del self.ready[rel]
                        self.seen[rel] = _Seen(obj, t)
                    continue
                prev = self.seen.get(rel)
                if prev is None or prev.obj.version != obj.version or prev.obj.size != obj.size:
                    self.seen[rel] = _Seen(obj, t)
                    if complete:
                        continue  # first sight of this version: wait for a second poll
                else:
                    prev.polls += 1
                s = self.seen[rel]
                if (not complete or s.polls >= 2) and t - s.first_seen >= self.s.settle_s:
                    self.ready[rel] = _Work(obj, s.first_seen, t, done)
                    del self.seen[rel]
            if complete:
                for rel in [r for r in self.seen if r not in poll.objects]:
                    del self.seen[rel]  # upload abandoned or renamed before it settled
                for rel in [r for r in self.ready if r not in poll.objects]:
                    del self.ready[rel]
            gone = self._gone(poll, complete)
        for rel in gone:
            self._erase(rel, "source_deleted", None)
        self._requests()
        self._maybe_commit_source()

    def _gone(self, poll: Poll, complete: bool) -> list[str]:
        """Keys with a published output that the source no longer has (seen missing on two polls in a row)."""
        if not self.s.erase_on_delete:
            return []
        published = {k for k, d in self.state.items() if d.status in ("ok", "skipped")}
        if not complete:
            return sorted(k for k in poll.deleted if k in published and k not in self.in_flight)
        missing = {k for k in published if k not in poll.objects}
        for k in list(self.absent):
            if k not in missing:
                del self.absent[k]
        for k in missing:
            self.absent[k] = self.absent.get(k, 0) + 1
        due = sorted(k for k in missing if self.absent[k] >= 2 and k not in self.in_flight)
        # The guard looks at everything missing now, not only what is due: a mass deletion observed
        # half-way through by one poll must not erase its first part on the next poll.
        if due and len(missing) > self.s.erase_guard * len(published) and len(published) > 10 \
                and self.s.erase_guard < 1:
            self.last_error = (f"{len(missing)} of {len(published)} sources vanished at once: not erasing (erase_guard "
                               f"{self.s.erase_guard}); check the input, or raise erase_guard")
            log.error("%s", self.last_error)
            return []
        return due

    # -- workers

    def _submit(self) -> None:
        with self.lock:
            while self.ready and len(self.in_flight) < self.s.max_in_flight and not self.stopping.is_set():
                rel = next(iter(self.ready))
                work = self.ready.pop(rel)
                work.prev = self.state.get(rel)
                fut = self.pool.submit(self._process, work)
                fut.add_done_callback(lambda _f: self.wake.set())
                self.in_flight[rel] = fut

    def _collect(self) -> None:
        with self.lock:
            done = [(rel, f) for rel, f in self.in_flight.items() if f.done()]
        for rel, fut in done:
            rec = fut.result()  # _process never raises
            with self.lock:
                del self.in_flight[rel]
                self._finish(rec)

    def _finish(self, rec: AuditRecord) -> None:
        """In memory first (never resubmitted by this process); durable at the next flush."""
        w = rec.extra.get("watch", {})
        self.state[rec.relative_path] = Done(rec.status, w.get("version"), {
            "relative_path": rec.relative_path, "status": rec.status, "input_sha256": rec.input_sha256,
            "input_size": rec.input_size, "output_uri": rec.output_uri, "output_sha256": rec.output_sha256,
            "output_size": rec.output_size, "input_uri": rec.input_uri})
        self.finished.append(rec)
        if self.oldest_finished is None:
            self.oldest_finished = time.monotonic()
        self.counts[rec.status] = self.counts.get(rec.status, 0) + 1
        if w.get("published") == "already_present":
            self.counts["republished_identical"] += 1
        if rec.status == "ok" and w.get("latency_s") is not None:
            self.latencies.append(float(w["latency_s"]))
            self.done_times.append(self.clock())
        if rec.status == "failed":
            log.warning("failed %s: %s", rec.relative_path, rec.error)

    def _process(self, work: _Work) -> AuditRecord:
        obj = work.obj
        started = self.clock()
        attempts = 0
        while True:
            attempts += 1
            try:
                rec = self._process_once(work)
            except Exception as exc:  # fail closed: recorded, the watcher goes on
                log.exception("unexpected error on %s", obj.rel)
                rec = AuditRecord(run_id=self.run_id, input_uri=self._display_in(obj.path), relative_path=obj.rel)
                self.anonymizer.stamp(rec).fail(f"internal error: {type(exc).__name__}: {exc}", "internal")
                rec.finished_at = now()
            if rec.status != "failed" or rec.error_code not in RETRYABLE or attempts > self.s.retries:
                break
            if self.stopping.is_set() and attempts > 1:
                break
            time.sleep(min(0.5 * 2 ** (attempts - 1), 8.0))
        finished = self.clock()
        arrival = obj.mtime if obj.mtime is not None else work.seen_at
        rec.extra.setdefault("watch", {}).update({
            "version": obj.version, "source": self.s.source, "arrived_at": _iso(arrival), "seen_at": _iso(work.seen_at),
            "ready_at": _iso(work.ready_at), "started_at": _iso(started), "attempts": attempts,
            "latency_s": round(finished - arrival, 4), "queue_s": round(started - work.ready_at, 4),
            "process_s": round(finished - started, 4)})
        if work.prev is not None and work.prev.status in ("ok", "skipped"):
            rec.extra["watch"]["previous_version"] = work.prev.version
        return rec

    def _process_once(self, work: _Work) -> AuditRecord:
        from anon_core.pipeline import _hash_stream
        from anon_core.runner import process_asset

        obj, prev = work.obj, work.prev
        target = join(self.out_root, obj.rel)
        # Touched but not changed (same size and content as the last published version): nothing to publish.
        if prev is not None and prev.status in ("ok", "skipped") and prev.row.get("input_size") == obj.size \
                and self.out_fs.exists(target):
            digest, size = _hash_stream(self.in_fs, obj.path)
            if digest == prev.row.get("input_sha256"):
                rec = AuditRecord(run_id=self.run_id, input_uri=self._display_in(obj.path), relative_path=obj.rel,
                                  status="skipped", started_at=now())
                self.anonymizer.stamp(rec)
                rec.input_sha256, rec.input_size = digest, size
                rec.output_uri, rec.output_sha256 = prev.row.get("output_uri"), prev.row.get("output_sha256")
                rec.output_size = prev.row.get("output_size")
                rec.extra = {"watch": {"skipped": "new version token, same bytes as the published version"}}
                rec.finished_at = now()
                return rec
        if not self.out_fs.exists(target):
            rec = process_asset(self.anonymizer, self.in_fs, obj.path, obj.rel, self.out_fs, self.out_root,
                                run_id=self.run_id, input_uri=self.s.input, output_uri=self.s.output)
            rec.extra.setdefault("watch", {})["published"] = "new" if rec.status == "ok" else None
            return rec
        # Something is already at the target: a previous version's output, or this version's from a run that died
        # before its row was written. Anonymize into a private folder and publish only if the bytes differ.
        local = fsspec.filesystem("file")
        with tempfile.TemporaryDirectory(prefix="anon-watch-") as stage:
            os.chmod(stage, 0o700)
            rec = process_asset(self.anonymizer, self.in_fs, obj.path, obj.rel, local, stage, run_id=self.run_id,
                                input_uri=self.s.input, output_uri=self.s.output)
            if rec.status != "ok":
                return rec
            try:
                existing, _ = _hash_stream(self.out_fs, target)
            except FileNotFoundError:
                existing = None
            if existing == rec.output_sha256:
                published = "already_present"
            else:
                put_atomic(self.out_fs, join(stage, obj.rel), target)
                published = "replaced"
            rec.output_uri = self._display_out(target)
            rec.extra.setdefault("watch", {})["published"] = published
            return rec

    # -- rows

    def _flush(self, force: bool) -> bool:
        """Write waiting rows as one part file. Returns False if the write failed (rows stay queued)."""
        with self.lock:
            if not self.finished:
                return True
            due = force or len(self.finished) >= self.s.batch_rows or (
                self.oldest_finished is not None and time.monotonic() - self.oldest_finished >= self.s.flush_s)
            if not due:
                return True
            batch = list(self.finished)
        path = join(self.man_root, f"run_id={self.run_id}/part-{self.part_seq:06d}.parquet")
        batch[0].config_json = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        try:
            write_manifest(batch, self.man_fs, path)
        except Exception as exc:  # keep the rows; the next flush retries with the same part name
            self.last_error = f"manifest write failed: {type(exc).__name__}: {exc}"
            log.error("%s", self.last_error)
            return False
        with self.lock:
            del self.finished[:len(batch)]
            self.oldest_finished = time.monotonic() if self.finished else None
            self.part_seq += 1
        self._maybe_commit_source()
        return True

    def _maybe_commit_source(self) -> None:
        """Event sources may forget events once everything they named is settled in durable rows."""
        if self.source.complete:
            return
        with self.lock:
            quiet = not (self.finished or self.in_flight or self.ready or self.seen)
        if quiet:
            try:
                self.source.commit()
            except Exception as exc:
                log.warning("queue offsets not saved (%s): events will be replayed and dropped as done", exc)

    # -- erasure

    def _erase(self, rel: str, reason: str, request: dict | None, matched_by: str = "key") -> bool:
        """Delete the outputs of `rel` and queue an `erased` row. False if the key is busy (retry later)."""
        with self.lock:
            if rel in self.in_flight:
                return False
            done = self.state.get(rel)
            pending = self.ready.pop(rel, None) or self.seen.pop(rel, None)
            version = pending.obj.version if pending is not None else (done.version if done else None)
            if done is not None and done.status == "erased" and done.version == version:
                return True  # already erased (a request replayed after a crash)
        target = join(self.out_root, rel)
        deleted = []
        if self.out_fs.exists(target):
            self.out_fs.rm(target)
            deleted.append(self._display_out(target))
        row = done.row if done else {}
        rec = AuditRecord(run_id=self.run_id, input_uri=row.get("input_uri") or self._display_in(join(self.in_root,
                                                                                                       rel)),
                          relative_path=rel, status="erased", started_at=now())
        self.anonymizer.stamp(rec)
        rec.input_sha256, rec.input_size = row.get("input_sha256"), row.get("input_size")
        rec.output_uri = deleted[0] if deleted else None
        rec.output_sha256 = row.get("output_sha256") if deleted else None
        rec.output_size = row.get("output_size") if deleted else None
        rec.extra = {"watch": {"version": version}, "erasure": {
            "reason": reason, "matched_by": matched_by, "deleted": deleted,
            "previous_status": done.status if done else None, **({"request": request} if request else {})}}
        rec.finished_at = now()
        with self.lock:
            self._finish(rec)
            self.absent.pop(rel, None)
        log.info("erased %s (%s): %d output(s) deleted", rel, reason, len(deleted))
        return True

    def _requests(self) -> None:
        """Handle erasure request files that have settled and are not marked done."""
        if self.er_fs is None or not self.er_fs.exists(self.er_root):
            return
        try:
            found = _find(self.er_fs, self.er_root)
        except OSError as exc:
            log.warning("erasure requests not listed: %s", exc)
            return
        names = set(found)
        for path, info in sorted(found.items()):
            if path.endswith(DONE_SUFFIX) or not path.endswith(REQUEST_EXTENSIONS) or _TEMP_RE.search(
                    _rel(self.er_fs, self.er_root, path)):
                continue
            if path + DONE_SUFFIX in names:
                continue
            ver, _ = version_of(info)
            prev = self.requests_seen.get(path)
            polls = prev[1] + 1 if prev and prev[0] == ver else 1
            self.requests_seen[path] = (ver, polls)
            if polls < 2:
                continue  # same rule as assets: a request still being written is not read
            self._handle_request(path)

    def _handle_request(self, path: str) -> None:
        data = self.er_fs.cat_file(path)
        from anon_core.audit import sha256_bytes

        try:
            keys, hashes = parse_request(data, path.lower())
        except (ValueError, KeyError) as exc:
            log.error("erasure request %s unreadable: %s", path, exc)
            return
        request = {"uri": self._display(self.s.erasure_root or "", path), "sha256": sha256_bytes(data)}
        with self.lock:
            by_hash = {k: "sha256" for k, d in self.state.items() if d.row.get("input_sha256") in hashes
                       and d.status != "erased"}
        targets = {self._key(k): "key" for k in keys}
        targets.update({k: v for k, v in by_hash.items() if k not in targets})
        busy = [k for k, how in sorted(targets.items()) if not self._erase(k, "request", request, how)]
        if busy:
            log.info("erasure request %s waits for %d asset(s) in flight", path, len(busy))
            return
        if not self._flush(force=True):
            return  # rows not durable: leave the request unmarked, it is replayed (idempotently) next poll
        summary = {"request": request["uri"], "request_sha256": request["sha256"], "done_at": now().isoformat(),
                   "run_id": self.run_id, "keys": sorted(targets), "unmatched_sha256": sorted(
                       h for h in hashes if h not in {self.state[k].row.get("input_sha256") for k in by_hash})}
        write_atomic(self.er_fs, path + DONE_SUFFIX, json.dumps(summary, indent=2).encode())
        self.requests_seen.pop(path, None)
        log.info("erasure request %s done: %d key(s)", path, len(targets))

    def _key(self, key: str) -> str:
        """A request may name keys relative to the input, or by full path/URI."""
        key = key.strip()
        if "://" in key:
            key = key.split("://", 1)[1]
        for root in (self.in_root.rstrip("/") + "/", self.in_root.lstrip("/").rstrip("/") + "/"):
            if key.startswith(root):
                return key[len(root):]
        return key.lstrip("/") if not key.startswith("./") else key[2:]

    # -- shutdown, progress

    def _idle(self) -> bool:
        with self.lock:
            return not (self.in_flight or self.ready or self.finished)

    def _drain(self) -> None:
        """Let in-flight assets finish (never abandon a half-done publish), then write their rows."""
        for fut in list(self.in_flight.values()):
            try:
                fut.result()
            except Exception:  # _process never raises; belt and braces
                log.exception("worker crashed")
        self._collect()
        self.pool.shutdown(wait=True)
        for _ in range(3):
            if self._flush(force=True):
                break
            time.sleep(1.0)
        self._maybe_commit_source()
        self._report("stopped")

    def status(self, state: str = "running") -> dict:
        with self.lock:
            lat = list(self.latencies)
            t = self.clock()
            recent = [x for x in self.done_times if t - x <= 60.0]
            window = min(60.0, max(1e-6, t - self.started))
            return {
                "run_id": self.run_id, "state": state, "input": self.s.input, "output": self.s.output,
                "updated_at": _iso(t), "uptime_s": round(t - self.started, 1), "polls": self.polls,
                "in_flight": len(self.in_flight), "ready": len(self.ready), "settling": len(self.seen),
                "rows_pending": len(self.finished), "known_keys": len(self.state), **self.counts,
                "latency_p50_s": _pct(lat, 0.5), "latency_p95_s": _pct(lat, 0.95),
                "assets_per_s_60s": round(len(recent) / window, 3), "last_error": self.last_error,
                "pid": os.getpid(), "host": _HOST,
            }

    def _report(self, state: str | None = None) -> None:
        st = self.status(state or ("stopping" if self.stopping.is_set() else "running"))
        log.info("[watch] %s ok=%d failed=%d skipped=%d erased=%d in_flight=%d ready=%d settling=%d "
                 "p50=%ss p95=%ss %.2f assets/s", st["state"], st["ok"], st["failed"], st["skipped"], st["erased"],
                 st["in_flight"], st["ready"], st["settling"], st["latency_p50_s"], st["latency_p95_s"],
                 st["assets_per_s_60s"])
        try:
            write_atomic(self.status_fs, self.status_path, json.dumps(st, indent=2).encode())
        except Exception as exc:  # progress is best effort; the manifest is what counts
            log.warning("status file not written: %s", exc)

    def _display(self, user_uri: str, path: str) -> str:
        from anon_core.runner import _display

        return _display(user_uri, path)

    def _display_in(self, path: str) -> str:
        return self._display(self.s.input, path)

    def _display_out(self, path: str) -> str:
        return self._display(self.s.output, path)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)  # signal 0: existence check only, nothing is sent
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def new_request_name() -> str:
    """A unique name for an erasure request file (for tools that drop requests into `_erasure/`)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8] + ".jsonl"


__all__ = ["ChangeSource", "FileQueueSource", "ObjectInfo", "Poll", "PollingSource", "WatchSettings", "Watcher",
           "is_candidate", "load_state", "parse_request", "read_rows"]
