"""Archive jobs behind `POST /v1/jobs`: a bounded worker pool and a pluggable executor.

`LocalExecutor` runs `anon_core.runner.run` in the service process (one Anonymizer per job, outputs and
manifest exactly like `anon anonymize`). `RayExecutor` runs the Ray Data job (`jobs/anonymize.py`) as a child
process, so a Ray driver never lives inside the web server and a crashed job cannot take the service down.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from jobs.service.errors import public_message

log = logging.getLogger("anon.service.jobs")

Progress = Callable[[str], None]  # called with "ok" / "failed" / "skipped" per finished asset


@dataclass
class JobSpec:
    input: str
    output: str
    policy: str
    config_sets: list[str]
    callback_url: str | None = None


@dataclass
class Job:
    id: str
    owner: str  # digest of the API key that submitted it: other keys cannot see it
    spec: JobSpec
    status: str = "queued"  # queued | running | done | failed
    run_id: str | None = None
    assets: int | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    manifest: str | None = None
    error: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    callback_status: str | None = None

    def public(self) -> dict:
        d = asdict(self)
        d.pop("owner")
        spec = d.pop("spec")
        d.update(input=spec["input"], output=spec["output"], policy=spec["policy"], callback_url=spec["callback_url"])
        return d


class Executor(Protocol):
    def __call__(self, job: Job, progress: Progress) -> dict: ...


class LocalExecutor:
    """In-process `anon_core.runner.run` (the CLI's loop); `config_for(policy)` gives the cached AnonConfig.

    Local (`file://`) inputs and outputs go through `ConfinedFileSystem`s over the read and the write roots:
    symlinks are refused at listing and again at every open, when the job runs (not only when it was submitted).
    """

    def __init__(self, config_for: Callable[[str], object], storage_options: dict | None = None,
                 read_roots: list[str] | None = None, write_roots: list[str] | None = None) -> None:
        self.config_for = config_for
        self.storage_options = storage_options or {}
        self.read_roots, self.write_roots = list(read_roots or []), list(write_roots or [])

    def _filesystems(self, job: Job):
        from anon_core.storage import filesystem
        from jobs.service.confined import ConfinedFileSystem

        out = []
        for uri, roots in ((job.spec.input, self.read_roots), (job.spec.output, self.write_roots)):
            if _local_path(uri) is not None:
                out.append((ConfinedFileSystem(roots), _local_path(uri)))
            else:
                out.append(filesystem(uri, **self.storage_options))
        return tuple(out)

    def __call__(self, job: Job, progress: Progress) -> dict:
        from anon_core.runner import new_run_id, run

        job.run_id = new_run_id()
        summary = run(job.spec.input, job.spec.output, self.config_for(job.spec.policy), run_id=job.run_id,
                      progress=False, on_record=lambda rec: progress(rec.status),
                      storage_options=self.storage_options, filesystems=self._filesystems(job))
        return {"run_id": summary.run_id, "assets": len(summary.records), "ok": summary.ok,
                "failed": summary.failed, "skipped": 0, "manifest": summary.manifest}


class RayExecutor:
    """`python jobs/anonymize.py input=... output=...` as a child process; its last stdout line is the summary."""

    def __init__(self, timeout_s: float = 24 * 3600, extra_overrides: list[str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.extra = list(extra_overrides or [])
        self.script = str(Path(__file__).resolve().parent.parent / "anonymize.py")

    def __call__(self, job: Job, progress: Progress) -> dict:
        # URIs passed UriPolicy's charset check (no quotes), so single-quoting keeps them one Hydra value.
        cmd = [sys.executable, self.script, f"input='{job.spec.input}'", f"output='{job.spec.output}'",
               *job.spec.config_sets, f"policy={job.spec.policy}", "job.progress=false", *self.extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"ray job exited {proc.returncode}: {tail[0][:300]}")
        s = json.loads(lines[-1])
        return {k: s.get(k) for k in ("run_id", "assets", "ok", "failed", "skipped", "manifest")}


def _local_path(uri: str) -> str | None:
    """The literal (not resolved) local path of a file URI or plain path; None for object stores."""
    import os
    from urllib.parse import urlsplit

    if "://" not in uri:
        return os.path.normpath(uri)
    parts = urlsplit(uri)
    return os.path.normpath(parts.path) if parts.scheme.lower() == "file" else None


class QueueFull(RuntimeError):
    pass


class JobManager:
    """Bounded: `workers` jobs run at once, at most `max_queued` wait; finished jobs are kept (newest `keep`)."""

    def __init__(self, executor: Executor, workers: int = 1, max_queued: int = 16, keep: int = 1000,
                 on_finish: Callable[[Job], None] | None = None, max_per_owner: int | None = None) -> None:
        self.executor = executor
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="anon-job")
        self.max_queued = max_queued
        # one key's share of the queue: without it a single client fills the queue and everyone else gets 429
        self.max_per_owner = max_per_owner or max_queued
        self.keep = keep
        self.on_finish = on_finish
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()

    def submit(self, owner: str, spec: JobSpec) -> Job:
        with self.lock:
            active = [j for j in self.jobs.values() if j.status in ("queued", "running")]
            if len(active) >= self.max_queued:
                raise QueueFull(f"{len(active)} jobs are queued or running")
            mine = sum(j.owner == owner for j in active)
            if mine >= self.max_per_owner:
                raise QueueFull(f"this key has {mine} jobs queued or running (the limit per key)")
            job = Job(id=uuid.uuid4().hex, owner=owner, spec=spec)
            self.jobs[job.id] = job
            while len(self.jobs) > self.keep:
                oldest = next(iter(self.jobs.values()))
                if oldest.status in ("queued", "running"):
                    break
                self.jobs.popitem(last=False)
        self.pool.submit(self._run, job)
        return job

    def get(self, owner: str, job_id: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def _progress(self, job: Job) -> Progress:
        def tick(status: str) -> None:
            with self.lock:
                if status in ("ok", "failed", "skipped"):
                    setattr(job, status, getattr(job, status) + 1)

        return tick

    def _run(self, job: Job) -> None:
        job.status, job.started_at = "running", datetime.now(UTC).isoformat()
        t0 = time.perf_counter()
        try:
            s = self.executor(job, self._progress(job))
            with self.lock:
                job.run_id = s.get("run_id") or job.run_id
                job.assets = s.get("assets")
                job.ok, job.failed, job.skipped = int(s.get("ok") or 0), int(s.get("failed") or 0), \
                    int(s.get("skipped") or 0)
                job.manifest = s.get("manifest")
                job.status = "done"
        except Exception as exc:  # the job fails, the service stays up
            log.exception("job %s failed", job.id)  # the full text (paths, endpoints) only in the server log
            job.status, job.error = "failed", f"{type(exc).__name__}: {public_message(str(exc))}"
        job.finished_at = datetime.now(UTC).isoformat()
        job.seconds = round(time.perf_counter() - t0, 3)
        if self.on_finish:
            try:
                self.on_finish(job)
            except Exception:
                log.exception("on_finish for job %s", job.id)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def post_webhook(job: Job, attempts: int = 3, timeout_s: float = 10.0) -> None:
    """POST the job's public status to its callback (already checked against the allowed hosts).

    Redirects are not followed: a redirect could point the server at a host nobody allowed.
    """
    import httpx

    url = job.spec.callback_url
    if not url:
        return
    body = job.public()
    for i in range(attempts):
        try:
            r = httpx.post(url, json=body, timeout=timeout_s, follow_redirects=False)
            job.callback_status = str(r.status_code)
            if r.status_code < 500:
                return
        except httpx.HTTPError as exc:
            job.callback_status = f"error: {type(exc).__name__}"
        time.sleep(min(2**i, 10))

