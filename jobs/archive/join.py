"""The join of a segmented video (a Ray task per asset): segments -> one output, one manifest row."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import pyarrow as pa

from anon_core.storage import filesystem, join, put_atomic


def _sha256_file(path: str, chunk: int = 8 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _sum(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def finish_asset(settings_d: dict, run_id: str, item: dict, results: list[dict]) -> dict:
    """Join the asset's segments (all reported by the actors) and write its one manifest row; returns the
    driver's result row. A failed segment makes the asset `failed` (nothing is published)."""
    from anon_core.audit import AuditRecord, now, write_manifest
    from anon_core.storage import display_uri, sha256_stream
    from anon_core.video.segments import SegmentPlan, join_segments
    from jobs.archive.actor import with_retries
    from jobs.archive.segments import close_source, open_source
    from jobs.archive.settings import JobSettings

    t0 = time.perf_counter()
    settings = JobSettings(**settings_d)
    opts = settings.storage_options
    in_fs, _ = filesystem(settings.input, **opts)
    out_fs, out_root = filesystem(settings.output, **opts)
    man_fs, man_root = filesystem(settings.manifest_root, **opts)
    rel, stage = item["rel"], item["stage"]
    results = sorted(results, key=lambda r: r["segment"])
    ok = [r for r in results if r["status"] == "segment_ok"]
    stamp = json.loads(out_fs.cat_file(join(stage, "stamp.json"))) if ok else {}
    rec = AuditRecord(run_id=run_id, input_uri=display_uri(settings.input, item["path"]), relative_path=rel,
                      media_type="video", started_at=now())
    for k, v in stamp.items():
        setattr(rec, k, v)
    rec.input_size = int(item["size"]) if item["size"] >= 0 else None
    rec.extra = {"segments": [{k: r.get(k) for k in ("segment", "start_s", "end_s", "frames", "frames_analysed",
                                                    "attempts", "seconds", "host", "run_id", "resumed", "error")}
                              for r in results],
                 "segment_s": settings.segment_s, "segment_margin_s": settings.segment_margin_s}
    failed = [r for r in results if r["status"] != "segment_ok"]
    if failed:
        rec.fail("; ".join(r.get("error", "") for r in failed)[:2000], failed[0].get("error_code") or "internal")
    else:
        try:
            plan = SegmentPlan.from_dict(json.loads(out_fs.cat_file(join(stage, "plan.json"))))
            rec.format = plan.family
            ext = os.path.splitext(rel)[1].lower()
            with tempfile.TemporaryDirectory(prefix="anon-join-") as work:
                os.chmod(work, 0o700)
                locals_ = []
                for r in results:
                    p = os.path.join(work, f"seg-{r['segment']:05d}{ext}")
                    out_fs.get_file(join(stage, f"seg-{r['segment']:05d}{ext}"), p)
                    locals_.append(p)
                out = os.path.join(work, "output" + ext)
                from anon_core.config import AnonConfig

                video = AnonConfig.from_dict(json.loads(stamp["config_json"]), complete=True).video
                src = open_source(in_fs, item["path"])
                try:
                    info = join_segments(src, plan, locals_, out, video)
                finally:
                    close_source(src)
                rec.input_sha256, rec.input_size = sha256_stream(in_fs, item["path"])
                rec.output_sha256, rec.output_size = _sha256_file(out)
                target = join(out_root, rel)
                put_atomic(out_fs, out, target)
            rec.output_uri = display_uri(settings.output, target)
            rec.status = "ok"
            rec.frames = info["frames"]
            rec.duration_s = float((plan.pts[-1] + plan.durations[-1] - plan.pts[0]) * plan.tb)
            rec.width, rec.height = ok[0].get("width"), ok[0].get("height")
            rec.detections = _sum(r.get("detections") for r in ok)
            rec.masked = _sum(r.get("masked") for r in ok)
            rec.timings_ms = _sum(r.get("timings_ms") for r in ok)
            rec.metadata_removed = info["metadata_removed"]
            rec.extra.update(info["streams"], packets_copied=info["packets_copied"])
        except Exception as exc:  # fail closed: no output, a failed row
            rec.fail(f"segment join failed: {type(exc).__name__}: {exc}", "internal")
    rec.timings_ms["join"] = round((time.perf_counter() - t0) * 1000, 1)
    rec.config_json = stamp.get("config_json")
    rec.finished_at = now()
    key = hashlib.sha256(rel.encode()).hexdigest()[:20]
    path = join(man_root, f"run_id={run_id}/part-v{key}.parquet")
    with_retries(lambda: write_manifest([rec], man_fs, path), f"manifest part {path}")
    return {"relative_path": rel, "status": rec.status, "error_code": rec.error_code or "", "media_type": "video",
            "input_size": rec.input_size, "output_size": rec.output_size, "frames": rec.frames,
            "duration_s": rec.duration_s, "segments": len(results)}


# -- driver side

TODO = pa.schema([("rel", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("seg", pa.int64()),
                  ("nseg", pa.int64()), ("stage", pa.string())])


class TodoWriter:
    """Segment rows handed back by phase 1, streamed to a Parquet file beside the manifests (flat driver
    memory); phase 2 reads it as a Ray Dataset."""

    def __init__(self, settings, run_id: str) -> None:
        self.fs, root = filesystem(settings.manifest_root, **settings.storage_options)
        self.path = join(root, f"_segments/_todo/run_id={run_id}.parquet")
        self.writer = None
        self.rows = 0
        self._fh = None

    def add(self, rows: dict[str, list]) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.fs.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fh = self.fs.open(self.path, "wb")
            self.writer = pq.ParquetWriter(self._fh, TODO)
        t = pa.table({"rel": rows["rel"], "path": rows["path"], "size": [int(v) for v in rows["size"]],
                      "seg": [int(v) for v in rows["seg"]], "nseg": [int(v) for v in rows["nseg"]],
                      "stage": rows["stage"]}, schema=TODO)
        self.writer.write_table(t)
        self.rows += t.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._fh.close()


def segment_dataset(todo: TodoWriter, batch_rows: int = 1):
    """Phase 2's input: one segment per block, so every actor takes segments one at a time."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    ds = ray.data.read_parquet(todo.path, filesystem=PyFileSystem(FSSpecHandler(todo.fs)))
    return ds.repartition(target_num_rows_per_block=batch_rows)


class Joins:
    """Tracks phase 2's segment results per asset (in flight only) and starts each asset's join task once
    all its segments reported; `drain` waits for the joins and yields their result rows."""

    def __init__(self, settings, run_id: str, num_cpus: float) -> None:
        import ray

        self.settings_d, self.run_id = vars(settings), run_id
        self.task = ray.remote(finish_asset).options(num_cpus=num_cpus, max_retries=3)
        self.pending: dict[str, dict] = {}
        self.futures: list = []

    def add(self, row: dict) -> None:
        rel = row["relative_path"]
        p = self.pending.setdefault(rel, {"n": int(row["segments"]), "results": [], "item": {
            "rel": rel, "path": row["path"], "stage": row["stage"], "size": int(row["input_size"])}})
        p["results"].append(json.loads(row["detail"]))
        if len(p["results"]) == p["n"]:
            del self.pending[rel]
            self.futures.append(self.task.remote(self.settings_d, self.run_id, p["item"], p["results"]))

    def ready(self, block: bool = False) -> list[dict]:
        import ray

        if not self.futures:
            return []
        done, self.futures = ray.wait(self.futures, num_returns=len(self.futures), timeout=None if block else 0)
        return ray.get(done)
