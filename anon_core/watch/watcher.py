"""The watcher: poll, settle, hand settled objects to a bounded pool, commit rows in batches, erase."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from anon_core.audit import AuditRecord, write_manifest
from anon_core.config import AnonConfig
from anon_core.storage import display_uri, filesystem, join
from anon_core.watch.erasure import ErasureMixin
from anon_core.watch.publish import PublishMixin, Work
from anon_core.watch.settings import WatchSettings
from anon_core.watch.sources import ChangeSource, FileQueueSource, ObjectInfo, Poll, PollingSource
from anon_core.watch.state import Done, load_state, read_rows
from anon_core.watch.status import StatusMixin

log = logging.getLogger("anon.watch")


@dataclass
class Seen:
    obj: ObjectInfo
    first_seen: float  # wall clock (epoch) when this version was first listed
    polls: int = 1


class Watcher(ErasureMixin, PublishMixin, StatusMixin):
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
        self.seen: dict[str, Seen] = {}  # candidates not yet settled or not yet submitted
        self.ready: dict[str, Work] = {}  # settled, waiting for a worker (insertion order = arrival order)
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
                        self.seen[rel] = Seen(obj, t)
                    continue
                prev = self.seen.get(rel)
                if prev is None or prev.obj.version != obj.version or prev.obj.size != obj.size:
                    self.seen[rel] = Seen(obj, t)
                    if complete:
                        continue  # first sight of this version: wait for a second poll
                else:
                    prev.polls += 1
                s = self.seen[rel]
                if (not complete or s.polls >= 2) and t - s.first_seen >= self.s.settle_s:
                    self.ready[rel] = Work(obj, s.first_seen, t, done)
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

    def _display(self, user_uri: str, path: str) -> str:
        return display_uri(user_uri, path)

    def _display_in(self, path: str) -> str:
        return self._display(self.s.input, path)

    def _display_out(self, path: str) -> str:
        return self._display(self.s.output, path)


__all__ = ["Seen", "Watcher"]
