"""job.plan_only and the distributed listing/resume (jobs/archive/listing.py, resume.py), without models:
plan_only never processes, so the earlier manifests are written here with the core's own writer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# As tests/test_ray_job.py: token auth from the environment, set before Ray is imported (Ray caches the mode it
# finds first, whichever of these modules is collected first).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _cfg(inp: Path, out: Path, *overrides: str) -> dict:
    from jobs.config import compose_dict

    return compose_dict([f"input={inp}", f"output={out}", "policy=faces", "job.progress=false",
                         "job.num_cpus_local=2", *overrides], config_name="job")


def _config_hash(cfg: dict) -> str:
    from jobs.anonymize import JOB_KEYS
    from jobs.config import anon_config

    return anon_config(cfg, extra_keys=JOB_KEYS).hash()


def _archive(root: Path) -> dict[str, bytes]:
    files = {f"a/img{i}.jpg": bytes([i]) * (100 + i) for i in range(6)}
    files |= {f"b/c/clip{i}.mp4": bytes([i]) * (1000 + i) for i in range(3)}
    files |= {"top.wav": b"w" * 500, "notes.txt": b"not media", ".hidden/x.jpg": b"h", "a/_manifests/y.jpg": b"m"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _manifest(out: Path, run_id: str, rows: list[dict]) -> None:
    import fsspec

    from anon_core.audit import AuditRecord, write_manifest

    recs = []
    for r in rows:
        rec = AuditRecord(run_id=run_id, relative_path=r["rel"], status=r.get("status", "ok"),
                          input_sha256="ab" * 32, input_size=r["size"], config_hash=r["config_hash"],
                          output_uri=f"{out}/{r['rel']}", output_size=r["size"], media_type="image")
        rec.finished_at = r.get("finished_at", datetime.now(UTC))
        recs.append(rec)
    write_manifest(recs, fsspec.filesystem("file"), str(out / "_manifests" / f"run_id={run_id}" / "part-0.parquet"))


def _tree(p: Path) -> dict[str, int]:
    return {str(f.relative_to(p)): f.stat().st_size for f in p.rglob("*") if f.is_file()} if p.exists() else {}


def test_plan_only_counts_by_category_and_media_and_writes_nothing(tmp_path):
    from jobs.anonymize import run_job

    files = _archive(tmp_path / "in")
    out = tmp_path / "out"
    cfg = _cfg(tmp_path / "in", out, "job.plan_only=true", "job.run_id=plan1")
    h = _config_hash(cfg)
    later = datetime.now(UTC) + timedelta(hours=1)  # rows written after the files were
    old = datetime.now(UTC) - timedelta(days=1)
    _manifest(out, "r1", [
        {"rel": "a/img0.jpg", "size": 100, "config_hash": h, "finished_at": later},  # done
        {"rel": "a/img1.jpg", "size": 999, "config_hash": h, "finished_at": later},  # changed (size)
        {"rel": "a/img2.jpg", "size": 102, "config_hash": "other", "finished_at": later},  # config changed
        {"rel": "a/img3.jpg", "size": 103, "config_hash": h, "finished_at": old},  # changed (modified since)
        {"rel": "b/c/clip0.mp4", "size": 1000, "config_hash": h, "finished_at": later},  # done
    ])
    # a later run: a failed row (ignored) and a newer ok row of another config for img0 -> config_changed
    _manifest(out, "r2", [{"rel": "a/img0.jpg", "size": 100, "config_hash": h, "status": "failed",
                           "finished_at": later + timedelta(minutes=5)},
                          {"rel": "b/c/clip0.mp4", "size": 1000, "config_hash": "x",
                           "finished_at": later - timedelta(minutes=5)}])  # older: clip0 stays done
    bad = out / "_manifests" / "run_id=r3" / "part-0.parquet"  # a damaged part costs only its own assets
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really parquet")
    before = _tree(out)
    s = run_job(cfg)
    assert _tree(out) == before, "plan_only wrote something"
    media = [r for r in files if r.endswith((".jpg", ".mp4", ".wav")) and "/_" not in "/" + r
             and not r.startswith(".")]
    assert s["listed"]["assets"] == len(media) == 10
    assert s["listed"]["bytes"] == sum(len(files[r]) for r in media)
    assert s["done"]["assets"] == 2 and s["done"]["bytes"] == 100 + 1000
    assert s["changed"]["assets"] == 2 and s["config_changed"]["assets"] == 1
    assert s["new"]["assets"] == 5
    assert s["to_process"] == {"assets": 8, "bytes": s["listed"]["bytes"] - 1100}
    bm = s["by_media_type"]
    assert bm["image"]["listed"]["assets"] == 6 and bm["image"]["done"]["assets"] == 1
    assert bm["video"]["done"]["assets"] == 1 and bm["video"]["new"]["assets"] == 2
    assert bm["audio"]["new"] == {"assets": 1, "bytes": 500}
    # resume off: everything is to be processed
    cfg["job"]["resume"] = False
    assert run_job(cfg)["to_process"]["assets"] == 10


def test_listing_file_gives_the_same_plan_as_listing_the_input(tmp_path):
    from jobs.anonymize import run_job

    files = _archive(tmp_path / "in")
    base = str(tmp_path / "in").strip("/")
    keys = sorted(files)
    t = pa.table({"bucket": [""] * len(keys), "key": [f"{base}/{k}" for k in keys] + [],
                  "size": [len(files[k]) for k in keys],
                  "last_modified": pa.array([datetime.now(UTC) - timedelta(days=2)] * len(keys),
                                            pa.timestamp("us", tz="UTC")),
                  "e_tag": ["x"] * len(keys)})
    t = pa.concat_tables([t, pa.table({"bucket": [""], "key": ["elsewhere/z.jpg"], "size": [1],  # outside input
                                       "last_modified": t["last_modified"][:1], "e_tag": ["y"]})])
    pq.write_table(t, tmp_path / "inventory.parquet", row_group_size=4)  # several row groups: several tasks
    out = tmp_path / "out"
    cfg = _cfg(tmp_path / "in", out, "job.plan_only=true", "include=[a/*,b/**,top.wav]")
    _manifest(out, "r1", [{"rel": "a/img0.jpg", "size": 100, "config_hash": _config_hash(cfg)}])
    from_input = run_job(cfg)
    cfg["job"]["listing"] = str(tmp_path / "inventory.parquet")
    from_listing = run_job(cfg)
    for k in ("listed", "to_process", "new", "done", "by_media_type"):
        assert from_listing[k] == from_input[k], k
    assert from_input["listed"]["assets"] == 10 and from_input["done"]["assets"] == 1


def test_plan_only_cli_prints_the_plan_as_last_line(tmp_path):
    _archive(tmp_path / "in")
    res = subprocess.run([sys.executable, "jobs/anonymize.py", f"input={tmp_path / 'in'}",
                          f"output={tmp_path / 'out'}", "job.plan_only=true", "job.progress=false",
                          "job.num_cpus_local=2"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout.strip().splitlines()[-1])
    assert plan["plan_only"] is True and plan["to_process"]["assets"] == 10
    assert not (tmp_path / "out").exists()


def test_infra_autoscaling_and_dag_plan_then_run():
    import ast

    import yaml

    doc = yaml.safe_load((ROOT / "infra" / "rayjob.yaml").read_text())
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert groups["gpu-workers"]["minReplicas"] == 0 < groups["gpu-workers"]["maxReplicas"]
    assert groups["cpu-workers"]["maxReplicas"] > groups["cpu-workers"]["minReplicas"]
    assert "job.max_actors=" in doc["spec"]["entrypoint"] and "job.segment_s=" in doc["spec"]["entrypoint"]

    src = (ROOT / "infra" / "airflow_dag.py").read_text()
    assert "job.plan_only=true" in src and "plan >> gate >> run" in src
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "has_work")
    ns: dict = {}
    exec(compile(ast.Module([fn], []), "airflow_dag.py", "exec"), ns)  # the gate's logic, without Airflow

    class TI:
        def __init__(self, plan):
            self.plan = plan

        def xcom_pull(self, task_ids):
            return self.plan

    def plan(n, b):
        return {"to_process": {"assets": n, "bytes": b}, **{k: {"assets": 0} for k in
                                                          ("new", "changed", "config_changed", "done")}}

    assert ns["has_work"](TI(plan(0, 0))) is False
    assert ns["has_work"](TI(plan(3, 100)), "1000") is True
    with pytest.raises(RuntimeError):
        ns["has_work"](TI(plan(3, 5000)), "1000")
