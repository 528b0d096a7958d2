"""One asset in a worker thread: anonymize with the CLI's own per-asset code, publish only what changed.

Publishing rules (half of the exactly-once argument in `Watcher`): nothing at the target yet: publish directly
(atomically); something there already (an older version's output, or this version's from a run that died
before its row was written): anonymize into a private folder and publish only if the bytes differ; a new
version token with the same bytes as the published version: a `skipped` row, nothing published.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec

from anon_core.audit import AuditRecord, now
from anon_core.retry import RETRYABLE, retry
from anon_core.storage import join, put_atomic, sha256_stream
from anon_core.watch.settings import WatchSettings
from anon_core.watch.sources import ObjectInfo
from anon_core.watch.state import Done
from anon_core.watch.status import iso

log = logging.getLogger("anon.watch")


@dataclass
class Work:
    obj: ObjectInfo
    seen_at: float
    ready_at: float
    prev: Done | None


class PublishMixin:
    """The watcher's worker half (a mixin of `Watcher`; runs in the pool's threads, touches no shared state)."""

    s: WatchSettings
    stopping: threading.Event
    clock: Callable[[], float]
    run_id: str
    anonymizer: Any
    in_fs: Any
    out_fs: Any
    out_root: str

    def _process(self, work: Work) -> AuditRecord:
        obj = work.obj
        started = self.clock()

        def once(_attempt: int) -> AuditRecord:
            try:
                return self._process_once(work)
            except Exception as exc:  # fail closed: recorded, the watcher goes on
                log.exception("unexpected error on %s", obj.rel)
                rec = AuditRecord(run_id=self.run_id, input_uri=self._display_in(obj.path), relative_path=obj.rel)
                self.anonymizer.stamp(rec).fail(f"internal error: {type(exc).__name__}: {exc}", "internal")
                rec.finished_at = now()
                return rec

        rec, attempts = retry(once, again=lambda r: r.status == "failed" and r.error_code in RETRYABLE,
                              max_attempts=self.s.retries + 1,
                              give_up=lambda attempt: self.stopping.is_set() and attempt > 1, what=obj.rel)
        finished = self.clock()
        arrival = obj.mtime if obj.mtime is not None else work.seen_at
        rec.extra.setdefault("watch", {}).update({
            "version": obj.version, "source": self.s.source, "arrived_at": iso(arrival), "seen_at": iso(work.seen_at),
            "ready_at": iso(work.ready_at), "started_at": iso(started), "attempts": attempts,
            "latency_s": round(finished - arrival, 4), "queue_s": round(started - work.ready_at, 4),
            "process_s": round(finished - started, 4)})
        if work.prev is not None and work.prev.status in ("ok", "skipped"):
            rec.extra["watch"]["previous_version"] = work.prev.version
        return rec

    def _process_once(self, work: Work) -> AuditRecord:
        from anon_core.runner import process_asset

        obj, prev = work.obj, work.prev
        target = join(self.out_root, obj.rel)
        # Touched but not changed (same size and content as the last published version): nothing to publish.
        if prev is not None and prev.status in ("ok", "skipped") and prev.row.get("input_size") == obj.size \
                and self.out_fs.exists(target):
            digest, size = sha256_stream(self.in_fs, obj.path)
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
                existing, _ = sha256_stream(self.out_fs, target)
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


__all__ = ["PublishMixin", "Work"]
