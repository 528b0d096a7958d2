"""Erasure: requests dropped into `<input>/_erasure/` (or a deleted source) take the published output with them.

Anyone who can write into the watched input can drop a request, so a request is untrusted input. A key is
honoured only when (1) it is a candidate key (a media file below the input root: no `..`, no absolute path,
not inside `_manifests/`, `_erasure/`, `_temporary/`), (2) this watcher's manifest says it published an output
for that key, and (3) the output path, resolved under OUT, stays under OUT (no symlink out, not a symlink) and
is not inside the manifest, status or request locations. Anything else is refused: logged, listed in the
request's `.done.json` under `refused`, and nothing is deleted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
from typing import Any

from anon_core.audit import AuditRecord, now, sha256_bytes
from anon_core.storage import confined, join, write_atomic
from anon_core.watch.settings import DONE_SUFFIX, REQUEST_EXTENSIONS, TEMP_RE, WatchSettings
from anon_core.watch.sources import is_candidate, list_all, rel_key, version_of
from anon_core.watch.state import Done

log = logging.getLogger("anon.watch")


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


def request_key(key: str, in_root: str) -> str:
    """A request may name keys relative to the input, or by full path/URI: the key relative to the input."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    for root in (in_root.rstrip("/") + "/", in_root.lstrip("/").rstrip("/") + "/"):
        if key.startswith(root):
            return key[len(root):]
    return key.lstrip("/") if not key.startswith("./") else key[2:]


class ErasureMixin:
    """The watcher's erasure half (a mixin of `Watcher`: it shares the watcher's lock and state; `_finish`,
    `_flush` and the `_display*` helpers are the watcher's)."""

    s: WatchSettings
    lock: threading.Lock
    state: dict[str, Done]
    ready: dict[str, Any]
    seen: dict[str, Any]
    in_flight: dict[str, Any]
    absent: dict[str, int]
    requests_seen: dict[str, tuple[str, int]]
    anonymizer: Any
    run_id: str
    in_root: str
    out_fs: Any
    out_root: str
    man_root: str
    er_fs: Any
    er_root: str | None

    def _refusal(self, rel: str) -> str | None:
        """Why `rel` may not be erased (None: it may). Checked before anything is touched."""
        if not is_candidate(rel):
            return "not an asset key below the input (path traversal, absolute path, own folder or not media)"
        return None

    def _deletable(self, rel: str, done: Done | None) -> tuple[str | None, str | None]:
        """(output path to delete, None) or (None, why not): only an output the manifest says this watcher
        published, resolved under OUT and staying there."""
        if done is None or not done.published:
            return None, "the manifest records no published output for this key"
        target = join(self.out_root, rel)
        if not confined(self.out_fs, self.out_root, target):
            return None, "the output path leaves the output root (symlink or traversal)"
        for own in (self.man_root, self.er_root):  # configured inside OUT: still never ours to erase
            if own and confined(self.out_fs, own, target):
                return None, "the output path is inside the watcher's own files"
        return target, None

    def _erase(self, rel: str, reason: str, request: dict | None, matched_by: str = "key") -> bool:
        """Delete the output of `rel` and queue an `erased` row. False if the key is busy (retry later)."""
        why = self._refusal(rel)
        if why:  # a key from an old manifest or a stale event: nothing is touched, nothing recorded
            log.error("erasure of %r refused: %s", rel, why)
            return True
        with self.lock:
            if rel in self.in_flight:
                return False
            done = self.state.get(rel)
            pending = self.ready.pop(rel, None) or self.seen.pop(rel, None)
            version = pending.obj.version if pending is not None else (done.version if done else None)
            if done is not None and done.status == "erased" and done.version == version:
                return True  # already erased (a request replayed after a crash)
        target, why_not = self._deletable(rel, done)
        deleted, kept = [], None
        if target is not None and self.out_fs.exists(target):
            self.out_fs.rm_file(target)  # one file, never a folder
            deleted.append(self._display_out(target))
        elif why_not and self.out_fs.exists(join(self.out_root, rel)):
            kept = why_not  # something is there that we did not publish: left alone, said in the row
            log.warning("erasure of %s: %s exists but is not deleted: %s", rel, join(self.out_root, rel), why_not)
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
            "previous_status": done.status if done else None, **({"request": request} if request else {}),
            **({"not_deleted": kept} if kept else {})}}
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
            found = list_all(self.er_fs, self.er_root)
        except OSError as exc:
            log.warning("erasure requests not listed: %s", exc)
            return
        names = set(found)
        for path, info in sorted(found.items()):
            if path.endswith(DONE_SUFFIX) or not path.endswith(REQUEST_EXTENSIONS) or TEMP_RE.search(
                    rel_key(self.er_fs, self.er_root, path)):
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
        try:
            keys, hashes = parse_request(data, path.lower())
        except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            log.error("erasure request %s unreadable: %s", path, exc)
            return
        request = {"uri": self._display(self.s.erasure_root or "", path), "sha256": sha256_bytes(data)}
        with self.lock:
            by_hash = {k: "sha256" for k, d in self.state.items() if d.row.get("input_sha256") in hashes
                       and d.status != "erased"}
        targets: dict[str, str] = {}
        refused: list[dict] = []
        for k in sorted(keys):
            rel = request_key(k, self.in_root)
            why = self._refusal(rel)
            if why:
                refused.append({"key": k, "reason": why})
                log.error("erasure request %s: key %r refused: %s", path, k, why)
            else:
                targets[rel] = "key"
        targets.update({k: v for k, v in by_hash.items() if k not in targets and not self._refusal(k)})
        busy = [k for k, how in sorted(targets.items()) if not self._erase(k, "request", request, how)]
        if busy:
            log.info("erasure request %s waits for %d asset(s) in flight", path, len(busy))
            return
        if not self._flush(force=True):
            return  # rows not durable: leave the request unmarked, it is replayed (idempotently) next poll
        summary = {"request": request["uri"], "request_sha256": request["sha256"], "done_at": now().isoformat(),
                   "run_id": self.run_id, "keys": sorted(targets), "refused": refused, "unmatched_sha256": sorted(
                       h for h in hashes if h not in {self.state[k].row.get("input_sha256") for k in by_hash})}
        write_atomic(self.er_fs, path + DONE_SUFFIX, json.dumps(summary, indent=2).encode())
        self.requests_seen.pop(path, None)
        log.info("erasure request %s done: %d key(s), %d refused", path, len(targets), len(refused))



__all__ = ["ErasureMixin", "parse_request", "request_key"]
