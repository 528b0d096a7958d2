"""The Ray Data archive job (jobs/anonymize.py): against a real S3 server (SeaweedFS), local files, a killed
worker, and `ray job submit` on a local `ray start --head`. Everything is small in pixels to stay bounded on
2 cores; `policy=faces` so plate/person models are not needed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.s3fixture import free_ports, s3_server  # noqa: F401 - session fixture

# Token auth with a token held in the environment (never written to ~/.ray), set before Ray is imported: Ray's
# token loader caches what it finds first, and the processes it starts inherit this environment.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
pytest.importorskip("ray")
pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def make_archive(root: Path, n_images: int, n_clips: int, size=(128, 96)) -> list[str]:
    """Distinct small JPEGs (a face photo, shifted and tinted per index) and 1-s clips; returns relative paths."""
    from skimage import data

    from tests.video_helpers import make_clip

    base = data.astronaut()
    rels = []
    for i in range(n_images):
        rel = f"images/{i // 50:02d}/img{i:04d}.jpg"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        crop = np.roll(base, (i * 7) % 64, axis=1).astype(np.int16) + (i % 9) - 4
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size).save(p, quality=85)
        rels.append(rel)
    for i in range(n_clips):
        rel = f"clips/clip{i:02d}.mp4"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_clip(str(root / rel), n_frames=24, size=(160, 120), fps=24, face=40 + i, audio=i % 2 == 0)
        rels.append(rel)
    return rels


def job_cfg(input_uri: str, output_uri: str, *overrides: str, storage_options: dict | None = None) -> dict:
    from jobs.config import compose_dict

    d = compose_dict([f"input={input_uri}", f"output={output_uri}", "policy=faces", "job.progress=false",
                      *overrides], config_name="job")
    d["storage_options"] = storage_options or {}
    return d


def read_rows(fs, root: str) -> list[dict]:
    from anon_core.audit import SCHEMA

    rows = []
    for path in sorted(fs.find(root)):
        if path.endswith(".parquet") and "/_" not in path[len(root):]:
            with fs.open(path, "rb") as fh:
                rows += pq.read_table(fh, schema=SCHEMA).to_pylist()
    return rows


# -- fast checks


def test_job_config_keeps_core_defaults():
    """conf/job.yaml adds job keys only: the anonymization settings equal AnonConfig's defaults."""
    from anon_core.config import AnonConfig
    from jobs.config import compose_dict

    d = compose_dict(["input=a", "output=b"], config_name="job")
    got = AnonConfig.from_dict({k: v for k, v in d.items() if k in AnonConfig.__dataclass_fields__})
    assert json.dumps(got.to_dict(), sort_keys=True) == json.dumps(AnonConfig().to_dict(), sort_keys=True)
    assert d["job"]["retries"] >= 0 and 0 < d["job"]["num_cpus"] < 1


def test_include_exclude_globs():
    from jobs.anonymize import select

    items = [(f"/r/{r}", r) for r in ("a.jpg", "x/b.jpg", "x/c.mp4", "y/d.png")]
    assert [r for _, r in select(items, ["**/*.jpg"], [])] == ["a.jpg", "x/b.jpg"]
    assert [r for _, r in select(items, [], ["x/*"])] == ["a.jpg", "y/d.png"]
    assert [r for _, r in select(items, ["x/*", "y/*"], ["*.mp4"])] == ["x/b.jpg", "y/d.png"]


# -- done when: a bucket on the local object store


def test_job_over_s3_bucket_then_resume(s3_server, tmp_path):  # noqa: F811
    t0 = time.perf_counter()
    from jobs.anonymize import run_job

    rels = make_archive(tmp_path / "in", 200, 10)
    fs = s3_server.fs()
    bucket = s3_server.new_bucket("archive")
    fs.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    fs.invalidate_cache()
    assert len([p for p in fs.find(f"{bucket}/in")]) == len(rels)
    opts = s3_server.storage_options
    cfg = job_cfg(f"s3://{bucket}/in", f"s3://{bucket}/out", "job.batch_size=16", "job.actors=2",
                  "job.run_id=first", storage_options=opts)
    s1 = run_job(cfg)
    t1 = time.perf_counter()
    assert (s1["assets"], s1["ok"], s1["failed"]) == (len(rels), len(rels), 0), s1

    fs.invalidate_cache()
    for rel in rels:  # every output written, at its final key only (no temp objects left)
        assert fs.exists(f"{bucket}/out/{rel}"), rel
    outs = [p for p in fs.find(f"{bucket}/out") if "/_manifests/" not in p]
    assert len(outs) == len(rels)
    rows = read_rows(fs, f"{bucket}/out/_manifests/run_id=first")
    assert len(rows) == len(rels) and {r["relative_path"] for r in rows} == set(rels)
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:  # every sha256 in the manifest matches the bytes stored
        assert hashlib.sha256(fs.cat_file(f"{bucket}/in/{r['relative_path']}")).hexdigest() == r["input_sha256"]
        assert hashlib.sha256(fs.cat_file(f"{bucket}/out/{r['relative_path']}")).hexdigest() == r["output_sha256"]
        assert r["output_uri"] == f"s3://{bucket}/out/{r['relative_path']}"
    assert sum(r["media_type"] == "video" for r in rows) == 10
    assert fs.exists(f"{bucket}/out/_manifests/run_id=first/_ray_data_stats.txt")
    summary = json.loads(fs.cat_file(f"{bucket}/out/_manifests/run_id=first/_summary.json"))
    assert summary["frames"] == 200 + 10 * 24

    # Second run: everything skipped, recorded as skipped in its own partition.
    cfg["job"]["run_id"] = "second"
    s2 = run_job(cfg)
    assert (s2["skipped"], s2["ok"], s2["failed"]) == (len(rels), 0, 0), s2
    fs.invalidate_cache()
    rows2 = read_rows(fs, f"{bucket}/out/_manifests/run_id=second")
    assert len(rows2) == len(rels) and all(r["status"] == "skipped" for r in rows2)
    print(f"\nfirst run {t1 - t0:.1f} s (incl. archive build), second run {time.perf_counter() - t1:.1f} s")


def test_changed_input_is_processed_again(tmp_path):
    from jobs.anonymize import run_job

    rels = make_archive(tmp_path / "in", 6, 0)
    cfg = job_cfg(str(tmp_path / "in"), str(tmp_path / "out"), "job.actors=1", "job.run_id=a")
    assert run_job(cfg)["ok"] == 6
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "in" / rels[0])  # new bytes, same key
    (tmp_path / "in" / "images" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)  # corrupt: not retried
    cfg["job"]["run_id"] = "b"
    s = run_job(cfg)
    assert (s["ok"], s["skipped"], s["failed"]) == (1, 5, 1), s
    import fsspec

    rows = read_rows(fsspec.filesystem("file"), str(tmp_path / "out/_manifests/run_id=b"))
    by_rel = {r["relative_path"]: r for r in rows}
    bad = by_rel["images/bad.jpg"]
    assert bad["status"] == "failed" and json.loads(bad["extra_json"])["attempts"] == 1
    assert by_rel[rels[0]]["status"] == "ok"


# -- killing a worker mid-job


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _actor_pids(job_pid: int) -> list[int]:
    pids = []
    for p in _descendants(job_pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"AnonymizeActor" in cmd:
            pids.append(p)
    return pids


def test_killed_worker_loses_and_duplicates_nothing(tmp_path):
    rels = make_archive(tmp_path / "in", 60, 2, size=(320, 240))
    out = tmp_path / "out"
    parts = out / "_manifests" / "run_id=kill"
    cmd = [PY, "jobs/anonymize.py", f"input={tmp_path / 'in'}", f"output={out}", "policy=faces",
           "job.actors=1", "job.batch_size=2", "job.run_id=kill", "job.progress=false", "job.retries=0"]
    log = open(tmp_path / "job.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.exists() and any(p.suffix == ".parquet" for p in parts.iterdir()):
                pids = _actor_pids(proc.pid)
                if pids:
                    done_before = sum(p.suffix == ".parquet" for p in parts.iterdir())
                    os.kill(pids[0], signal.SIGKILL)  # the actor process this test's job started
                    killed = pids[0]
                    break
            time.sleep(0.05)
        assert killed is not None, "no actor found to kill"
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "job.log").read_text()
    assert rc == 0, text[-3000:]
    assert done_before < -(-len(rels) // 2), "the kill came after the last batch: not mid-job"
    import fsspec

    rows = read_rows(fsspec.filesystem("file"), str(parts))
    ok = [r["relative_path"] for r in rows if r["status"] == "ok"]
    assert sorted(ok) == sorted(rels), "every asset exactly once, ok"
    assert len(rows) == len(rels)
    for rel in rels:
        assert (out / rel).is_file()
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".partial")]
    assert not leftovers
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["ok"] == len(rels)


# -- ray job submit against a local `ray start --head`


def _clean_current_cluster(gcs_address: str) -> None:
    """A head stopped by PID leaves /tmp/ray/ray_current_cluster behind; remove it only if it is ours."""
    marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if marker.read_text().strip() == gcs_address:
            marker.unlink()
    except OSError:
        pass


def test_ray_job_submit(tmp_path):
    rels = make_archive(tmp_path / "in", 12, 1)
    out = tmp_path / "out"
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent, node_mgr, obj_mgr = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, PATH=f"{Path(PY).parent}:{os.environ['PATH']}", VIRTUAL_ENV=str(Path(PY).parent.parent))
    head = subprocess.Popen(
        [str(Path(PY).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={rt_agent}", f"--node-manager-port={node_mgr}",
         f"--object-manager-port={obj_mgr}", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        submit = [str(Path(PY).parent / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                  "--working-dir", ".", "--", "python", "jobs/anonymize.py", f"input={tmp_path / 'in'}",
                  f"output={out}", "policy=faces", "job.progress=false", "job.run_id=submitted"]
        deadline, res = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            if head.poll() is not None:
                pytest.fail("ray head exited: " + (tmp_path / "head.log").read_text()[-3000:])
            res = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=max(10, deadline - time.monotonic()))
            if res.returncode == 0 or "Connection" not in (res.stdout + res.stderr):
                break
            time.sleep(2)  # dashboard not up yet
        assert res is not None and res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
        for rel in rels:
            assert (out / rel).is_file()
        import fsspec

        rows = read_rows(fsspec.filesystem("file"), str(out / "_manifests" / "run_id=submitted"))
        assert len(rows) == len(rels) and all(r["status"] == "ok" for r in rows)
    finally:
        # Our head only: SIGTERM to the `ray start --block` process group we created, then SIGKILL leftovers.
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _clean_current_cluster(f"127.0.0.1:{gcs}")
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_manifest_dataset_reads_with_core_reader(tmp_path):
    """The partitioned manifest reads back with the CLI's reader (same schema; run_id stays a string)."""
    from anon_core.audit import SCHEMA, read_manifest
    from jobs.anonymize import run_job

    make_archive(tmp_path / "in", 3, 0)
    cfg = job_cfg(str(tmp_path / "in"), str(tmp_path / "out"), "job.actors=1", "job.run_id=r1")
    run_job(cfg)
    t = read_manifest(str(tmp_path / "out" / "_manifests"))
    assert t.schema.equals(SCHEMA) and t.num_rows == 3 and set(t.column("run_id").to_pylist()) == {"r1"}
    buf = io.BytesIO()
    pq.write_table(t, buf)
