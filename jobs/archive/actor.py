"""The archive job's actor: holds one loaded `Anonymizer`; each call anonymizes a batch of assets and commits
the batch's manifest part (see jobs/anonymize.py for the guarantees)."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import posixpath
import time
from typing import Any

import numpy as np

from anon_core.audit import AuditRecord, now, write_manifest
from anon_core.config import AnonConfig
from anon_core.media.probe import IMAGE_EXTENSIONS
from anon_core.retry import RETRYABLE, retry
from anon_core.storage import display_uri, filesystem, join, sha256_stream
from jobs.archive.settings import JobSettings

log = logging.getLogger("anon.job")

# What the actor returns per asset to the driver (progress + summary); the full rows go to the manifest.
RESULT_KEYS = ("relative_path", "status", "error_code", "media_type", "input_size", "output_size", "frames",
               "duration_s", "seconds")
TEXT_KEYS = ("relative_path", "status", "error_code", "media_type")
# Segment rows (job.segment_s) also return what the driver needs to start the asset's join.
SEGMENT_KEYS = ("segment", "segments", "path", "stage", "detail")


class AnonymizeActor:
    """Loads the models once; each call anonymizes a batch of assets and commits the batch's manifest part."""

    def __init__(self, config: dict, settings: dict, run_id: str, threads: int = 0, phase: int = 1):
        if threads:  # one onnxruntime pool per actor sized to its share of the node
            os.environ["ANON_ORT_THREADS"] = str(threads)
        logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"))
        from anon_core.pipeline import Anonymizer

        self.settings = JobSettings(**settings)
        self.config = AnonConfig.from_dict(config, complete=True)
        self.anonymizer = Anonymizer(self.config)
        self.run_id = run_id
        self.phase = phase  # 1: whole assets (segment rows handed back to the driver); 2: segments
        opts = self.settings.storage_options
        self.in_fs, _ = filesystem(self.settings.input, **opts)
        self.out_fs, self.out_root = filesystem(self.settings.output, **opts)
        self.man_fs, self.man_root = filesystem(self.settings.manifest_root, **opts)
        self.pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [{k: py_value(batch[k][i]) for k in batch} for i in range(len(batch["rel"]))]
        segs = [i for i in items if int(i.get("seg", -1)) >= 0]
        whole = [i for i in items if int(i.get("seg", -1)) < 0]
        fetched = self._prefetch(whole)
        records, todo = [], []
        for item in whole:
            t0 = time.perf_counter()
            rec = self._maybe_skip(item, fetched.get(item["rel"]))
            if rec is None:
                todo.append((item, len(records)))
                records.append(None)
            else:
                rec.extra["seconds"] = round(time.perf_counter() - t0, 4)
                records.append(rec)
        t_batch = time.perf_counter()
        datas = [fetched.get(item["rel"]) for item, _ in todo]
        prepared = self.anonymizer.prepare_images(datas) if self.settings.image_batch else [None] * len(todo)
        t_batch = time.perf_counter() - t_batch
        for (item, at), data, prep in zip(todo, datas, prepared):
            t0 = time.perf_counter()
            rec = self._process(item, data, prep)
            # the shared decode + detect time is split evenly over the batch's images
            rec.extra["seconds"] = round(time.perf_counter() - t0 + t_batch / max(len(todo), 1), 4)
            records[at] = rec
        if records:
            self._commit(records)
        # Typed columns (str / float with NaN) so Ray Data builds plain Arrow columns, not pickled objects.
        out: dict[str, list] = {k: [] for k in RESULT_KEYS + SEGMENT_KEYS}
        for r in records:
            for k in RESULT_KEYS:
                v = r.extra["seconds"] if k == "seconds" else getattr(r, k)
                out[k].append((v or "") if k in TEXT_KEYS else (float("nan") if v is None else float(v)))
            for k, v in zip(SEGMENT_KEYS, (-1.0, 0.0, "", "", "")):
                out[k].append(v)
        for item in segs:
            self._segment(item, out) if self.phase == 2 else self._todo(item, out)
        return out

    def _todo(self, item: dict, out: dict[str, list]) -> None:
        vals = {"relative_path": item["rel"], "status": "segment_todo", "error_code": "", "media_type": "video",
                "input_size": float(item["size"]), "output_size": float("nan"), "frames": float("nan"),
                "duration_s": float("nan"), "seconds": 0.0, "segment": float(item["seg"]),
                "segments": float(item["nseg"]), "path": item["path"], "stage": item["stage"], "detail": ""}
        for k, v in vals.items():
            out[k].append(v)

    def _segment(self, item: dict, out: dict[str, list]) -> None:
        from jobs.archive.segments import process_segment

        t0 = time.perf_counter()
        try:
            res = process_segment(self, item)
        except Exception as exc:  # staging unreachable after retries, etc.: the asset fails, the job goes on
            log.exception("segment %s of %s", item["seg"], item["rel"])
            res = {"status": "segment_failed", "segment": int(item["seg"]), "attempts": 1,
                   "error": f"segment {item['seg']}: {type(exc).__name__}: {exc}", "error_code": "internal"}
        vals = {"relative_path": item["rel"], "status": res["status"], "error_code": res.get("error_code") or "",
                "media_type": "video", "input_size": float(item["size"]), "output_size": float("nan"),
                "frames": float(res.get("frames", float("nan"))), "duration_s": float("nan"),
                "seconds": round(time.perf_counter() - t0, 4), "segment": float(item["seg"]),
                "segments": float(item["nseg"]), "path": item["path"], "stage": item["stage"],
                "detail": json.dumps(res, default=str)}
        for k, v in vals.items():
            out[k].append(v)

    def _prefetch(self, items: list[dict]) -> dict[str, bytes]:
        """Images (by extension and listed size) are small objects: fetch the batch's concurrently, so the
        actor is not idle on object-store latency. Videos and audio are streamed by the core instead."""
        limit = self.settings.prefetch_mb << 20
        small = [i for i in items if posixpath.splitext(i["rel"])[1].lower() in IMAGE_EXTENSIONS
                 and 0 <= i["size"] <= limit]
        futures = {i["rel"]: self.pool.submit(self.in_fs.cat_file, i["path"]) for i in small}
        out = {}
        for rel, fut in futures.items():
            try:
                out[rel] = fut.result()
            except Exception:  # OSError, or a connection error s3fs passes through (store restarting)
                pass  # fetched again (with retries) by process_asset itself
        return out

    def _maybe_skip(self, item: dict, data: bytes | None) -> AuditRecord | None:
        prev = json.loads(item["prev"]) if item["prev"] else None
        if not prev or prev.get("config_hash") != self.anonymizer.config_hash:
            return None
        target = join(self.out_root, item["rel"])
        try:
            if self.out_fs.size(target) != prev.get("output_size"):
                return None
            if data is not None:
                digest, size = hashlib.sha256(data).hexdigest(), len(data)
            else:
                digest, size = sha256_stream(self.in_fs, item["path"])
        except (OSError, FileNotFoundError):
            return None
        if digest != prev.get("input_sha256"):
            return None
        rec = AuditRecord(run_id=self.run_id, input_uri=display_uri(self.settings.input, item["path"]),
                          relative_path=item["rel"], status="skipped", started_at=now())
        self.anonymizer.stamp(rec)
        rec.input_sha256, rec.input_size = digest, size
        rec.output_uri, rec.output_sha256, rec.output_size = prev["output_uri"], prev["output_sha256"], size_of(prev)
        rec.extra = {"skipped": "output exists; same input sha256 and config hash", "previous_run_id": prev["run_id"]}
        rec.finished_at = now()
        return rec

    def _process(self, item: dict, data: bytes | None, prepared=None) -> AuditRecord:
        from anon_core.runner import process_asset

        def once(attempt: int) -> AuditRecord:
            if attempt > 1:
                log.warning("retrying %s (attempt %d)", item["rel"], attempt)
            try:  # a retry fetches again: the prefetched copy may be what went wrong
                return process_asset(self.anonymizer, self.in_fs, item["path"], item["rel"], self.out_fs,
                                     self.out_root, run_id=self.run_id, input_uri=self.settings.input,
                                     output_uri=self.settings.output, data=data if attempt == 1 else None,
                                     prepared=prepared if attempt == 1 else None)
            except Exception as exc:  # fail closed: the asset is recorded, the batch goes on
                log.exception("unexpected error on %s", item["rel"])
                rec = AuditRecord(run_id=self.run_id, input_uri=item["path"], relative_path=item["rel"])
                self.anonymizer.stamp(rec).fail(f"internal error: {type(exc).__name__}: {exc}", "internal")
                rec.finished_at = now()
                return rec

        rec, attempts = retry(once, again=lambda r: r.status != "ok" and r.error_code in RETRYABLE,
                              max_attempts=self.settings.retries + 1, what=item["rel"])
        rec.extra["attempts"] = attempts
        return rec

    def _commit(self, records: list[AuditRecord]) -> None:
        """One Parquet part per batch, named by its assets: a retried batch overwrites, never adds."""
        key = hashlib.sha256("\n".join(sorted(r.relative_path for r in records)).encode()).hexdigest()[:20]
        from anon_core.runner import config_json

        records[0].config_json = config_json(self.config)
        path = join(self.man_root, f"run_id={self.run_id}/part-{key}.parquet")
        # The batch's outputs are durable: a failed part write is retried here (same name: idempotent), not
        # raised, which would fail the whole Ray Data job.
        with_retries(lambda: write_manifest(records, self.man_fs, path), f"manifest part {path}")


STORAGE_RETRY_S = 120.0  # how long a manifest/summary write keeps trying through a storage outage


def with_retries(fn, what: str, budget_s: float = STORAGE_RETRY_S) -> Any:
    """fn() with exponential backoff (0.5 s .. 8 s) on any exception, until budget_s has passed."""
    return retry(lambda _attempt: fn(), budget_s=budget_s, retry_on=(Exception,), what=f"writing {what}")[0]


def size_of(prev: dict) -> int | None:
    return int(prev["output_size"]) if prev.get("output_size") is not None else None


def py_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v

