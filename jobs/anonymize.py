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
- resume: an asset is skipped when its output exists with the size recorded and its latest ok row has the same
  input sha256 and config hash; a `skipped` row records that in this run's partition.
"""

from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python jobs/anonymize.py` (and ray job submit's copy) import the repo beside it
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from anon_core.audit import AuditRecord, now, write_manifest  # noqa: E402 (importing anon_core turns telemetry off)
from anon_core.config import AnonConfig  # noqa: E402
from anon_core.media.probe import IMAGE_EXTENSIONS  # noqa: E402
from anon_core.offline import offline_env  # noqa: E402
from anon_core.retry import RETRYABLE, retry  # noqa: E402
from anon_core.storage import display_uri, filesystem, join, list_inputs, sha256_stream  # noqa: E402

log = logging.getLogger("anon.job")

# What the actor returns per asset to the driver (progress + summary); the full rows go to the manifest.
RESULT_KEYS = ("relative_path", "status", "error_code", "media_type", "input_size", "output_size", "frames",
               "duration_s", "seconds")
TEXT_KEYS = ("relative_path", "status", "error_code", "media_type")
# conf/job.yaml's own keys; every other key is the anonymization config (anon_core/config.py).
JOB_KEYS = ("input", "output", "manifest", "include", "exclude", "storage_options", "job")
MANIFEST_COLUMNS = ["relative_path", "status", "input_sha256", "config_hash", "output_uri", "output_sha256",
                    "output_size", "finished_at", "run_id"]


@dataclass
class JobSettings:
    input: str
    output: str
    manifest: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    run_id: str | None = None
    retries: int = 2
    resume: bool = True
    actors: int = 0
    batch_size: int = 8
    num_cpus: float = 0.5
    num_gpus: Any = "auto"
    threads: int = 0
    prefetch_mb: int = 64
    ray_address: str | None = None
    num_cpus_local: int | None = None
    progress: bool = True
    fail_exit_code: int = 1

    @classmethod
    def from_cfg(cls, d: dict) -> JobSettings:
        job = dict(d.get("job") or {})
        top = {k: d.get(k) for k in ("input", "output", "manifest", "include", "exclude", "storage_options")}
        top["include"] = list(top["include"] or [])
        top["exclude"] = list(top["exclude"] or [])
        top["storage_options"] = dict(top["storage_options"] or {})
        for k in ("input", "output", "manifest"):  # actors may run elsewhere: local paths become absolute
            if top[k] and "://" not in top[k]:
                top[k] = os.path.abspath(top[k])
        return cls(**top, **{k: v for k, v in job.items() if k in cls.__dataclass_fields__})

    @property
    def manifest_root(self) -> str:
        return self.manifest or join(self.output, "_manifests")


# -- listing and resume state (driver side)

def select(items: list[tuple[str, str]], include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """Keep (path, rel) pairs whose relative path matches an include glob (all when none) and no exclude glob."""
    def hit(rel: str, globs: list[str]) -> bool:
        # "**/x" also matches "x" at the top level, as users expect from shells.
        return any(fnmatch.fnmatchcase(rel, g) or (g.startswith("**/") and fnmatch.fnmatchcase(rel, g[3:]))
                   for g in globs)

    return [(p, r) for p, r in items if (not include or hit(r, include)) and not hit(r, exclude)]


def list_assets(settings: JobSettings) -> list[dict]:
    fs, root = filesystem(settings.input, **settings.storage_options)
    pairs = select(list_inputs(fs, root), settings.include, settings.exclude)
    sizes = {}
    try:  # one listing call for the sizes (object stores return them with the keys)
        info = fs.find(root, detail=True) if fs.isdir(root) else {}
        sizes = {k: v.get("size") for k, v in info.items()}
    except OSError:
        pass
    return [{"path": p, "rel": r, "size": int(sizes.get(p) or sizes.get(p.lstrip("/")) or -1)} for p, r in pairs]


def load_done(settings: JobSettings) -> dict[str, dict]:
    """Latest ok manifest row per relative path, over every run under the manifest root (CLI manifests too; a
    damaged part is skipped with a warning and costs only a re-run of its assets)."""
    from anon_core.manifests import iter_rows

    fs, root = filesystem(settings.manifest_root, **settings.storage_options)
    done: dict[str, dict] = {}
    for _path, _i, row in iter_rows(fs, root, MANIFEST_COLUMNS):
        if row["status"] != "ok" or not row["input_sha256"]:
            continue
        prev = done.get(row["relative_path"])
        if prev is None or row["finished_at"] >= prev["finished_at"]:
            done[row["relative_path"]] = row
    return done


# -- the actor

class AnonymizeActor:
    """Loads the models once; each call anonymizes a batch of assets and commits the batch's manifest part."""

    def __init__(self, config: dict, settings: dict, run_id: str, threads: int = 0):
        if threads:  # one onnxruntime pool per actor sized to its share of the node
            os.environ["ANON_ORT_THREADS"] = str(threads)
        logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"))
        from anon_core.pipeline import Anonymizer

        self.settings = JobSettings(**settings)
        self.config = AnonConfig.from_dict(config, complete=True)
        self.anonymizer = Anonymizer(self.config)
        self.run_id = run_id
        opts = self.settings.storage_options
        self.in_fs, _ = filesystem(self.settings.input, **opts)
        self.out_fs, self.out_root = filesystem(self.settings.output, **opts)
        self.man_fs, self.man_root = filesystem(self.settings.manifest_root, **opts)
        self.pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [{k: _py(batch[k][i]) for k in batch} for i in range(len(batch["rel"]))]
        fetched = self._prefetch(items)
        records = []
        for item in items:
            t0 = time.perf_counter()
            data = fetched.get(item["rel"])
            rec = self._maybe_skip(item, data)
            if rec is None:
                rec = self._process(item, data)
            rec.extra["seconds"] = round(time.perf_counter() - t0, 4)
            records.append(rec)
        self._commit(records)
        # Typed columns (str / float with NaN) so Ray Data builds plain Arrow columns, not pickled objects.
        out: dict[str, list] = {k: [] for k in RESULT_KEYS}
        for r in records:
            for k in RESULT_KEYS:
                v = r.extra["seconds"] if k == "seconds" else getattr(r, k)
                out[k].append((v or "") if k in TEXT_KEYS else (float("nan") if v is None else float(v)))
        return out

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

    def _process(self, item: dict, data: bytes | None) -> AuditRecord:
        from anon_core.runner import process_asset

        def once(attempt: int) -> AuditRecord:
            if attempt > 1:
                log.warning("retrying %s (attempt %d)", item["rel"], attempt)
            try:  # a retry fetches again: the prefetched copy may be what went wrong
                return process_asset(self.anonymizer, self.in_fs, item["path"], item["rel"], self.out_fs,
                                     self.out_root, run_id=self.run_id, input_uri=self.settings.input,
                                     output_uri=self.settings.output, data=data if attempt == 1 else None)
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


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


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
    return actors, float(settings.num_cpus), num_gpus, threads


def run_job(cfg: dict) -> dict:
    import ray

    from jobs.config import anon_config

    settings = JobSettings.from_cfg(cfg)
    config = anon_config(cfg, extra_keys=JOB_KEYS)
    from anon_core.runner import new_run_id

    run_id = settings.run_id or new_run_id()
    t0 = time.perf_counter()
    assets = list_assets(settings)
    done = load_done(settings) if settings.resume else {}
    config_hash = config.hash()
    for a in assets:
        prev = done.get(a["rel"])
        a["prev"] = json.dumps(prev, default=str) if prev and prev["config_hash"] == config_hash else ""
    part_dir = join(settings.manifest_root, f"run_id={run_id}")
    print(f"[anon] run {run_id}: {len(assets)} assets from {settings.input} -> {settings.output} "
          f"({sum(bool(a['prev']) for a in assets)} with a previous ok row); manifest {part_dir}", flush=True)
    summary = {"run_id": run_id, "assets": len(assets), "ok": 0, "failed": 0, "skipped": 0, "bytes_in": 0,
               "bytes_out": 0, "frames": 0, "media_seconds": 0.0, "output": settings.output, "manifest": part_dir}
    failures: list[str] = []
    stats_text = ""
    if assets:
        init_ray(settings)
        try:
            actors, num_cpus, num_gpus, threads = plan_actors(settings)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = bool(settings.progress)
            # Small runs: smaller batches so every actor gets work. One block per batch keeps each retried task
            # (and so each manifest part) to the same set of assets.
            batch = max(1, min(settings.batch_size, -(-len(assets) // actors)))
            ds = ray.data.from_items(assets, override_num_blocks=-(-len(assets) // batch))
            ds = ds.map_batches(
                AnonymizeActor,
                fn_constructor_kwargs={"config": config.to_dict(), "settings": vars(settings), "run_id": run_id,
                                       "threads": threads},
                compute=ray.data.ActorPoolStrategy(size=actors),
                batch_size=batch,
                num_cpus=num_cpus,
                num_gpus=num_gpus or None,
            )
            print(f"[anon] {actors} actor(s) x {num_cpus} CPU, {num_gpus} GPU, {threads} ORT thread(s), "
                  f"batch {batch}", flush=True)
            last = time.perf_counter()
            seen = 0
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i in range(len(batch["relative_path"])):
                    row = {k: _py(batch[k][i]) for k in RESULT_KEYS}
                    seen += 1
                    summary[row["status"]] = summary.get(row["status"], 0) + 1
                    if row["status"] == "failed":
                        failures.append(f"{row['relative_path']}: {row['error_code']}")
                    if row["status"] == "ok":
                        for key, col in (("bytes_in", "input_size"), ("bytes_out", "output_size"),
                                         ("frames", "frames"), ("media_seconds", "duration_s")):
                            if _ok_num(row[col]):
                                summary[key] += int(row[col]) if key != "media_seconds" else float(row[col])
                if settings.progress and (time.perf_counter() - last > 5 or seen == len(assets)):
                    last = time.perf_counter()
                    el = last - t0
                    print(f"[anon] {seen}/{len(assets)} assets  ok {summary['ok']}  failed {summary['failed']}  "
                          f"skipped {summary['skipped']}  {seen / el:.1f} assets/s  "
                          f"{summary['frames'] / el:.1f} frames/s", flush=True)
            stats_text = ds.stats()
        finally:
            ray.shutdown()
    el = time.perf_counter() - t0
    summary.update(seconds=round(el, 2), assets_per_s=round(len(assets) / el, 3) if el else 0.0,
                   fps=round(summary["frames"] / el, 2) if el else 0.0,
                   media_seconds=round(summary["media_seconds"], 2))
    _write_side_files(settings, run_id, summary, stats_text)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return summary


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
        if summary["failed"]:
            sys.exit(int(d.get("job", {}).get("fail_exit_code", 1)))

    return main


if __name__ == "__main__":
    _hydra_entry()()
