"""The archive job: Ray Data fans assets out to actors that each hold one loaded `Anonymizer`.

    python jobs/anonymize.py input=s3://bucket/in output=s3://bucket/out policy=faces job.actors=4
    ray job submit --working-dir . -- python jobs/anonymize.py input=... output=...

Keys: conf/job.yaml (job) + conf/config.yaml (anonymization, shared with the CLI). The job adds no
anonymization logic: every asset goes through `anon_core.runner.process_asset`, the CLI's own per-asset code.

Guarantees:
- outputs are published atomically (local: temp + rename; object stores: one PUT / completed multipart upload);
- a batch's manifest rows are written only after its outputs are durable, into a part file whose name is a
  function of the batch's assets, so a batch retried after a worker died overwrites its part instead of adding
  rows (nothing lost, nothing duplicated); a part (or the run summary) that fails to write is retried with backoff
  for up to STORAGE_RETRY_S (an object-store restart), never dropped (tests/test_fault_injection.py);
- listing and resume are Ray Data, not driver state (jobs/archive/listing.py, resume.py): the assets come from
  prefix-partitioned listing tasks or a Parquet listing file, earlier manifests are read by tasks, reduced to the
  latest ok row per key and joined with the listing (`Dataset.join`); the driver streams counters only;
- resume: an asset is skipped when its listed size and date match its latest ok row, that row has the same config
  hash, its output exists with the size recorded and its input has the sha256 recorded; a `skipped` row records
  that in this run's partition;
- `job.plan_only=true` prints what a run would do (jobs/archive/plan.py) as the last line, and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python jobs/anonymize.py` (and ray job submit's copy) import the repo beside it
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from anon_core.config import AnonConfig  # noqa: E402 (importing anon_core turns telemetry off)
from anon_core.offline import offline_env  # noqa: E402
from anon_core.storage import filesystem, join  # noqa: E402
from jobs.archive.actor import (  # noqa: E402,F401 - re-exported: tests and Ray pickle these by reference
    RESULT_KEYS,
    STORAGE_RETRY_S,
    AnonymizeActor,
    py_value,
    with_retries,
)
from jobs.archive.listing import select  # noqa: E402,F401
from jobs.archive.settings import JobSettings  # noqa: E402

log = logging.getLogger("anon.job")
# conf/job.yaml's own keys; every other key is the anonymization config (anon_core/config.py).
JOB_KEYS = ("input", "output", "manifest", "include", "exclude", "storage_options", "job")
MAX_FAILURES_LISTED = 1000  # failures printed at the end; the manifest has every one


# -- the driver

def init_ray(settings: JobSettings) -> None:
    import ray

    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    env = {"env_vars": offline_env()}
    if address == "local":
        # A private instance: never attach to someone else's `ray start` found in /tmp/ray.
        ray.init(address="local", num_cpus=settings.num_cpus_local, include_dashboard=False, runtime_env=env,
                 log_to_driver=True, logging_level=logging.WARNING)
    else:
        ray.init(address=address, runtime_env=None if os.environ.get("RAY_JOB_ID") else env,
                 logging_level=logging.WARNING)


def plan_actors(settings: JobSettings) -> tuple[int, float, float, int]:
    """(pool size, CPUs per actor, GPUs per actor, onnxruntime threads per actor) for the cluster we are on."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), int(res.get("GPU", 0))
    num_gpus = (1.0 if gpus else 0.0) if settings.num_gpus in ("auto", None) else float(settings.num_gpus)
    if settings.actors:
        actors = int(settings.actors)
    elif num_gpus:
        actors = max(1, int(gpus // num_gpus))
    else:
        actors = max(1, int(cpus))
    threads = settings.threads or max(1, int(cpus // actors))
    num_cpus = float(settings.num_cpus)
    if not num_gpus:
        # Ray Data runs the repartition and listing stages as 1-CPU tasks: CPU actors that reserve every CPU
        # leave them none and the job deadlocks (job.actors=4 on 2 cores, or one actor on a 1-CPU node).
        num_cpus = min(num_cpus, max(cpus - 1.0, 0.0) / actors)
    return actors, num_cpus, num_gpus, threads


def run_job(cfg: dict) -> dict:
    import ray

    from jobs.config import anon_config

    settings = JobSettings.from_cfg(cfg)
    config = anon_config(cfg, extra_keys=JOB_KEYS)
    from anon_core.runner import new_run_id

    run_id = settings.run_id or new_run_id()
    t0 = time.perf_counter()
    init_ray(settings)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(settings.progress)
        from jobs.archive.resume import planned

        cpus = float(ray.cluster_resources().get("CPU", 1))
        partitions = settings.shuffle_partitions or max(2, int(2 * cpus))
        assets = planned(settings, config.hash(), partitions)
        if settings.plan_only:
            from jobs.archive.plan import plan_summary

            summary = plan_summary(assets, settings, run_id)
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            return summary
        summary, stats_text = _run(assets, settings, config, run_id, t0)
    finally:
        ray.shutdown()
    _write_side_files(settings, run_id, summary, stats_text)
    return summary


def _run(assets, settings: JobSettings, config: AnonConfig, run_id: str, t0: float) -> tuple[dict, str]:
    """Phase 1 streams the planned assets through the actor pool; long videos (job.segment_s) come back as
    segment rows, which phase 2 spreads over a pool one segment at a time, joining each asset when its
    segments are in. The driver keeps counters and the in-flight segmented assets only."""
    from jobs.archive.join import Joins, TodoWriter, segment_dataset

    actors, num_cpus, num_gpus, threads = plan_actors(settings)
    batch = max(1, settings.batch_size)
    part_dir = join(settings.manifest_root, f"run_id={run_id}")
    print(f"[anon] run {run_id}: {settings.listing or settings.input} -> {settings.output}; manifest {part_dir}",
          flush=True)
    if settings.segment_s > 0:
        from jobs.archive.segments import expand

        assets = assets.map_batches(expand, fn_args=(vars(settings), config.to_dict()), batch_format="pyarrow",
                                    batch_size=16, num_cpus=0.25)
    # Blocks of at most one batch: every actor gets work, and a task retried after a worker died sees the same
    # assets (so it rewrites the same manifest parts).
    kwargs = {"config": config.to_dict(), "settings": vars(settings), "run_id": run_id, "threads": threads}
    print(f"[anon] {actors} actor(s) x {num_cpus} CPU, {num_gpus} GPU, {threads} ORT thread(s), batch {batch}",
          flush=True)
    summary = {"run_id": run_id, "assets": 0, "ok": 0, "failed": 0, "skipped": 0, "bytes_in": 0, "bytes_out": 0,
               "frames": 0, "media_seconds": 0.0, "output": settings.output, "manifest": part_dir}
    failures: list[str] = []
    todo = TodoWriter(settings, run_id)
    state = {"last": time.perf_counter()}

    import ray.data

    strategy = (ray.data.ActorPoolStrategy(min_size=max(1, actors), max_size=max(actors, settings.max_actors))
                if settings.max_actors else ray.data.ActorPoolStrategy(size=actors))

    def pool(ds, phase: int, batch_size: int):
        return ds.map_batches(AnonymizeActor, fn_constructor_kwargs={**kwargs, "phase": phase},
                              compute=strategy, batch_size=batch_size,
                              num_cpus=num_cpus, num_gpus=num_gpus or None)

    ds = pool(assets.repartition(target_num_rows_per_block=batch), 1, batch)
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows = [{k: py_value(out[k][i]) for k in out} for i in range(len(out["relative_path"]))]
        seg = [r for r in rows if r["status"] == "segment_todo"]
        if seg:
            todo.add({"rel": [r["relative_path"] for r in seg], "path": [r["path"] for r in seg],
                      "size": [r["input_size"] for r in seg], "seg": [r["segment"] for r in seg],
                      "nseg": [r["segments"] for r in seg], "stage": [r["stage"] for r in seg]})
        _count(summary, failures, [r for r in rows if r["status"] != "segment_todo"], settings, t0, state)
    stats_text = ds.stats()
    todo.close()
    if todo.rows:
        print(f"[anon] {todo.rows} video segments", flush=True)
        joins = Joins(settings, run_id, num_cpus)
        summary["segments"] = {"total": todo.rows, "ok": 0, "failed": 0, "resumed": 0}
        ds2 = pool(segment_dataset(todo), 2, 1)
        for out in ds2.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(out["relative_path"])):
                row = {k: py_value(out[k][i]) for k in out}
                key = "ok" if row["status"] == "segment_ok" else "failed"
                summary["segments"][key] += 1
                summary["segments"]["resumed"] += '"resumed": true' in row["detail"]
                joins.add(row)
            _count(summary, failures, joins.ready(), settings, t0, state)
        _count(summary, failures, joins.ready(block=True), settings, t0, state)
        stats_text += "\n\n" + ds2.stats()
    el = time.perf_counter() - t0
    summary.update(seconds=round(el, 2), assets_per_s=round(summary["assets"] / el, 3) if el else 0.0,
                   fps=round(summary["frames"] / el, 2) if el else 0.0,
                   media_seconds=round(summary["media_seconds"], 2))
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    if summary["failed"] > len(failures):
        print(f"... and {summary['failed'] - len(failures)} more failures (see the manifest)", file=sys.stderr)
    return summary, stats_text


def _count(summary: dict, failures: list[str], rows: list[dict], settings: JobSettings, t0: float,
           state: dict) -> None:
    for row in rows:
        summary["assets"] += 1
        summary[row["status"]] = summary.get(row["status"], 0) + 1
        if row["status"] == "failed" and len(failures) < MAX_FAILURES_LISTED:
            failures.append(f"{row['relative_path']}: {row['error_code']}")
        if row["status"] == "ok":
            for key, col in (("bytes_in", "input_size"), ("bytes_out", "output_size"), ("frames", "frames"),
                             ("media_seconds", "duration_s")):
                if _ok_num(row.get(col)):
                    summary[key] += int(row[col]) if key != "media_seconds" else float(row[col])
    if settings.progress and time.perf_counter() - state["last"] > 5:
        state["last"] = time.perf_counter()
        el = state["last"] - t0
        print(f"[anon] {summary['assets']} assets  ok {summary['ok']}  failed {summary['failed']}  "
              f"skipped {summary['skipped']}  {summary['assets'] / el:.1f} assets/s  "
              f"{summary['frames'] / el:.1f} frames/s", flush=True)


def _ok_num(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def _write_side_files(settings: JobSettings, run_id: str, summary: dict, stats_text: str) -> None:
    """Summary + Ray Data stats beside the run's parts (names starting with '_' are ignored by Parquet readers)."""
    from anon_core.storage import write_atomic

    fs, root = filesystem(settings.manifest_root, **settings.storage_options)
    base = join(root, f"run_id={run_id}")
    data = json.dumps(summary, indent=2).encode()
    with_retries(lambda: write_atomic(fs, join(base, "_summary.json"), data), "_summary.json")
    if stats_text:
        with_retries(lambda: write_atomic(fs, join(base, "_ray_data_stats.txt"), stats_text.encode()),
                     "_ray_data_stats.txt")


def _hydra_entry():
    import hydra
    from omegaconf import OmegaConf

    from anon_core.schema import SchemaError
    from jobs.config import anon_config, compose_dict, register

    register()  # the schema (anon_core/config.py's dataclasses) under conf/
    argv = sys.argv[1:]
    if not any(a.startswith("-") or a.lstrip("+~").startswith("hydra") for a in argv):
        try:  # plain overrides: check them against the schema first, for one line naming a bad key
            anon_config(compose_dict(argv, config_name="job"), extra_keys=JOB_KEYS)
        except SchemaError as exc:
            print(f"anon job: bad configuration: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    @hydra.main(config_path="../conf", config_name="job", version_base=None)
    def main(cfg) -> None:
        # Run the module's own copy (jobs.anonymize), so Ray pickles AnonymizeActor by reference, not by value.
        from jobs.anonymize import run_job as _run

        d = OmegaConf.to_container(cfg, resolve=True)
        try:
            summary = _run(d)
        except SchemaError as exc:
            print(f"anon job: bad configuration: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        print(json.dumps(summary), flush=True)
        if summary.get("failed"):
            sys.exit(int(d.get("job", {}).get("fail_exit_code", 1)))

    return main


if __name__ == "__main__":
    _hydra_entry()()
