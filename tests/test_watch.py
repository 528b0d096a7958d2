"""Continuous mode (`anon watch`, anon_core/watch/): local folders and a real S3 server (SeaweedFS).

The end-to-end tests run the CLI as a subprocess while a writer thread uploads 100 tiny PNGs over time; the
watcher is SIGKILLed once and SIGTERMed once mid-stream and restarted each time; then an erasure request and a
deleted source are processed. Expected: exactly 100 outputs and 100 ok rows (one per key), the erased keys'
outputs gone and recorded. `policy=faces` so only the face model is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.s3fixture import s3_server  # noqa: F401 - session fixture

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
N = 100


def png(i: int) -> bytes:
    """A distinct 96x72 PNG: even indexes show the astronaut (a face), odd ones a plain gradient."""
    if i % 2 == 0:
        from skimage import data

        arr = np.roll(data.astronaut(), (i * 5) % 97, axis=1)
        im = Image.fromarray(arr).resize((96, 72))
    else:
        g = np.linspace(0, 255, 96, dtype=np.float32)[None, :, None] * np.ones((72, 1, 3), np.float32)
        im = Image.fromarray(((g + i * 2) % 256).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def rel_of(i: int) -> str:
    return f"cam{i % 3}/{i:03d}.png"


# -- backends: the same test body over a local folder and an S3 bucket


class Local:
    def __init__(self, tmp: Path):
        self.inp, self.out = str(tmp / "in"), str(tmp / "out")
        os.makedirs(self.inp)
        self.opts: dict = {}

    def put(self, rel: str, data: bytes, slow: bool = False) -> None:
        path = Path(self.inp) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if slow:  # written in place in pieces, as a copy in progress looks: must not be picked up early
            with open(path, "wb") as fh:
                for k in range(0, len(data), max(1, len(data) // 4)):
                    fh.write(data[k:k + max(1, len(data) // 4)])
                    fh.flush()
                    time.sleep(0.04)
            return
        tmp = path.parent / f".{path.name}.partial"  # what rsync-like uploaders do
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def delete(self, rel: str) -> None:
        os.unlink(Path(self.inp) / rel)

    def outputs(self) -> set[str]:
        root = Path(self.out)
        if not root.exists():
            return set()
        return {p.relative_to(root).as_posix() for p in root.rglob("*.png") if "_manifests" not in p.parts}

    def fs(self):
        import fsspec

        return fsspec.filesystem("file")

    def man_root(self) -> str:
        return self.out + "/_manifests/watch"


class S3:
    def __init__(self, server):
        self.server = server
        bucket = server.new_bucket("watch")
        self.inp, self.out = f"s3://{bucket}/in", f"s3://{bucket}/out"
        self.bucket = bucket
        self.opts = server.storage_options
        self._fs = server.fs()

    def put(self, rel: str, data: bytes, slow: bool = False) -> None:
        self._fs.pipe_file(f"{self.bucket}/in/{rel}", data)  # a PUT is invisible until complete

    def delete(self, rel: str) -> None:
        self._fs.rm(f"{self.bucket}/in/{rel}")

    def outputs(self) -> set[str]:
        self._fs.invalidate_cache()
        root = f"{self.bucket}/out/"
        return {p[len(root):] for p in self._fs.find(root) if p.endswith(".png") and "/_manifests/" not in p}

    def fs(self):
        self._fs.invalidate_cache()
        return self._fs

    def man_root(self) -> str:
        return f"{self.bucket}/out/_manifests/watch"


def rows(b) -> list[dict]:
    from anon_core.watch import read_rows

    out = read_rows(b.fs(), b.man_root())
    for r in out:
        r["extra"] = json.loads(r["extra_json"]) if r["extra_json"] else {}
    return out


def start(b, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [PY, "-m", "jobs.cli", "watch", b.inp, "-o", b.out, "--set", "policy=faces", "--interval", "0.2",
           "--max-in-flight", "2", "--flush", "0.2", "--storage-options", json.dumps(b.opts), *extra]
    env = {**os.environ, "ANON_ORT_THREADS": "1", "AWS_EC2_METADATA_DISABLED": "true"}
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process by the test's finally
    return subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited ({proc.returncode}) while waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def run_end_to_end(b, tmp: Path) -> dict:
    """The Done-when scenario; returns numbers for the caller to print."""
    log = tmp / "watch.log"
    payloads = {rel_of(i): png(i) for i in range(N)}
    written: list[str] = []

    def writer():
        for i in range(N):
            b.put(rel_of(i), payloads[rel_of(i)], slow=i % 10 == 5)
            written.append(rel_of(i))
            time.sleep(0.06)

    t0 = time.monotonic()
    proc = start(b, log)
    th = threading.Thread(target=writer, daemon=True)
    th.start()
    procs = [proc]
    try:
        # 1st stop: SIGKILL mid-stream (no chance to write pending rows).
        wait_for(lambda: len(b.outputs()) >= 25, 90, "25 outputs", proc, log)
        proc.kill()
        proc.wait(timeout=10)
        killed_at = len(b.outputs())
        proc = start(b, log)
        procs.append(proc)
        # 2nd stop: SIGTERM mid-stream: finish in-flight work, write the rows, exit 0.
        wait_for(lambda: len(b.outputs()) >= 60, 90, "60 outputs", proc, log)
        assert stop(proc) == 0, log.read_text()[-3000:]
        termed_at = len(b.outputs())
        st = json.loads(b.fs().cat_file(b.man_root() + "/_status.json"))
        assert st["state"] == "stopped" and st["in_flight"] == 0 and st["rows_pending"] == 0
        proc = start(b, log)
        procs.append(proc)
        th.join(timeout=60)
        assert len(written) == N
        wait_for(lambda: sum(r["status"] == "ok" for r in rows(b)) >= N, 120, f"{N} ok rows", proc, log)
        t_all = time.monotonic() - t0

        rs = rows(b)
        ok = [r for r in rs if r["status"] == "ok"]
        assert len(ok) == N and len({r["relative_path"] for r in ok}) == N, "duplicate or missing ok rows"
        assert not [r for r in rs if r["status"] == "failed"], "a half-written input was picked up early"
        assert b.outputs() == set(payloads)
        for r in ok:  # each row describes the complete input
            assert r["input_sha256"] == hashlib.sha256(payloads[r["relative_path"]]).hexdigest()
        assert len({r["run_id"] for r in ok}) >= 2  # the work really was split over the restarts

        # Erasure: one key by request (by sha256 in a CSV), one source deleted.
        by_hash, by_delete = rel_of(7), rel_of(42)
        b.put("_erasure/req-1.csv", f"sha256\n{hashlib.sha256(payloads[by_hash]).hexdigest()}\n".encode())
        b.delete(by_delete)
        wait_for(lambda: {r["relative_path"] for r in rows(b) if r["status"] == "erased"} == {by_hash, by_delete},
                 60, "two erased rows", proc, log)
        wait_for(lambda: b.fs().exists(b.inp.split("://")[-1] + "/_erasure/req-1.csv.done.json"), 30,
                 "request marked done", proc, log)
        assert stop(proc) == 0
        assert b.outputs() == set(payloads) - {by_hash, by_delete}
        rs = rows(b)
        erased = {r["relative_path"]: r for r in rs if r["status"] == "erased"}
        assert erased[by_hash]["extra"]["erasure"]["reason"] == "request"
        assert erased[by_hash]["extra"]["erasure"]["matched_by"] == "sha256"
        assert erased[by_hash]["input_sha256"] == hashlib.sha256(payloads[by_hash]).hexdigest()
        assert erased[by_delete]["extra"]["erasure"]["reason"] == "source_deleted"
        assert erased[by_delete]["extra"]["erasure"]["deleted"]
        assert sum(r["status"] == "ok" for r in rs) == N  # the erasure added rows; it re-published nothing

        # A restart after all that does nothing: no new rows, the erased key (still in the input) stays erased.
        n_rows = len(rs)
        proc = start(b, log, "--once")
        procs.append(proc)
        assert proc.wait(timeout=60) == 0
        assert len(rows(b)) == n_rows and b.outputs() == set(payloads) - {by_hash, by_delete}

        lat = sorted(r["extra"]["watch"]["latency_s"] for r in ok)
        return {"killed_at": killed_at, "termed_at": termed_at, "seconds": round(t_all, 1),
                "p50": lat[len(lat) // 2], "p95": lat[int(0.95 * (len(lat) - 1))],
                "identical_republish_avoided": sum(r["extra"]["watch"].get("published") == "already_present"
                                                   for r in ok)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_local_end_to_end(tmp_path):
    nums = run_end_to_end(Local(tmp_path), tmp_path)
    print("local:", nums)


def test_s3_end_to_end(tmp_path, s3_server):  # noqa: F811 - the fixture
    nums = run_end_to_end(S3(s3_server), tmp_path)
    print("s3:", nums)


# -- in-process checks of the pieces (fast: one loaded Anonymizer, a watcher thread)


def _watcher(tmp: Path, anonymizer, **kw):
    from anon_core.watch import Watcher, WatchSettings

    s = WatchSettings(str(tmp / "in"), str(tmp / "out"), interval_s=0.1, flush_s=0.05, **kw)
    w = Watcher(s, anonymizer=anonymizer)
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    return w, th


def test_temp_names_slow_writes_changes_and_recovery(tmp_path, anonymizer):
    b = Local(tmp_path)
    for name in (".a.png.partial", "b.png.tmp", "c.png._COPYING_", "d.txt", "_manifests/e.png"):
        p = Path(b.inp) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png(0))
    w, th = _watcher(tmp_path, anonymizer)
    try:
        data = png(2)
        with open(Path(b.inp) / "slow.png", "wb") as fh:  # written in place in two steps, less than a poll apart
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.05)
            fh.write(data[len(data) // 2:])
        b.put("x/one.png", png(4))
        wait_for(lambda: b.outputs() == {"slow.png", "x/one.png"} and w.counts["ok"] >= 2, 20, "2 outputs")
        b.put("x/one.png", png(6))  # changed content: processed again, output replaced
        os.utime(Path(b.inp) / "slow.png")  # touched only: a `skipped` row, nothing re-published
        wait_for(lambda: w.counts["ok"] >= 3 and w.counts["skipped"] >= 1, 20, "change + touch")
    finally:
        w.stop()
        th.join(timeout=30)
    rs = rows(b)
    by = {}
    for r in rs:
        by.setdefault(r["relative_path"], []).append(r)
    assert set(by) == {"slow.png", "x/one.png"}
    assert [r["status"] for r in by["x/one.png"]] == ["ok", "ok"]
    assert by["x/one.png"][1]["extra"]["watch"]["published"] == "replaced"
    assert by["x/one.png"][1]["input_sha256"] == hashlib.sha256(png(6)).hexdigest()
    assert [r["status"] for r in by["slow.png"]] == ["ok", "skipped"]
    assert by["slow.png"][0]["input_size"] == len(png(2))
    # Recovery: the rows are lost (a crash before the flush); a new watcher re-runs, finds the same bytes at the
    # targets and publishes nothing, writing exactly one row per key.
    import shutil

    shutil.rmtree(Path(b.out) / "_manifests")
    before = {p: (Path(b.out) / p).stat().st_mtime_ns for p in b.outputs()}
    w, th = _watcher(tmp_path, anonymizer)
    try:
        wait_for(lambda: w.counts["ok"] >= 2, 20, "recovered rows")
    finally:
        w.stop()
        th.join(timeout=30)
    rs = rows(b)
    assert sorted(r["relative_path"] for r in rs) == ["slow.png", "x/one.png"]
    assert all(r["extra"]["watch"]["published"] == "already_present" for r in rs)
    assert {p: (Path(b.out) / p).stat().st_mtime_ns for p in b.outputs()} == before


def test_queue_source_and_erasure_by_key(tmp_path, anonymizer):
    b = Local(tmp_path)
    q = tmp_path / "queue"
    q.mkdir()
    b.put("a.png", png(0))
    b.put("b.png", png(1))
    b.put("c.png", png(3))  # present, but no event names it: an event source does not list
    ev = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": k}}} for k in ("a.png", "b.png")]}
    (q / "0001.jsonl").write_text(json.dumps(ev) + "\n")
    w, th = _watcher(tmp_path, anonymizer, source="queue", queue=str(q))
    try:
        wait_for(lambda: w.counts["ok"] >= 2, 20, "2 outputs from events")
        b.delete("b.png")
        with open(q / "0001.jsonl", "a") as fh:
            fh.write(json.dumps({"event": "deleted", "key": "b.png"}) + "\n")
        (Path(b.inp) / "_erasure").mkdir()
        (Path(b.inp) / "_erasure" / "r.jsonl").write_text(json.dumps({"key": "a.png"}) + "\n")
        wait_for(lambda: w.counts["erased"] >= 2 and (Path(b.inp) / "_erasure/r.jsonl.done.json").exists(), 20,
                 "erasures")
        wait_for(lambda: (Path(b.out) / "_manifests/watch/_state/queue_offsets.json").exists(), 10, "offsets")
    finally:
        w.stop()
        th.join(timeout=30)
    assert b.outputs() == set()
    assert json.loads((Path(b.out) / "_manifests/watch/_state/queue_offsets.json").read_text()) == {"0001.jsonl": 2}
    st = {r["relative_path"]: r["status"] for r in sorted(rows(b), key=lambda r: r["finished_at"])}
    assert st == {"a.png": "erased", "b.png": "erased"}


def test_parse_request_and_candidates():
    from anon_core.watch import is_candidate, parse_request

    h = "ab" * 32
    assert parse_request(f'{{"key": "a/b.png"}}\n{{"sha256": "{h}"}}\n'.encode(), "r.jsonl") == ({"a/b.png"}, {h})
    assert parse_request(f"key,sha256\nx.png,\n,{h.upper()}\n".encode(), "r.csv") == ({"x.png"}, {h})
    assert parse_request(f"y.png\n{h}\n".encode(), "r.txt") == ({"y.png"}, {h})
    assert is_candidate("a/b.JPG") and not is_candidate("a/.b.jpg") and not is_candidate("a/b.jpg.partial")
    assert not is_candidate("a/b.jpg._COPYING_") and not is_candidate("_erasure/x.png") and not is_candidate("x.tmp")


def test_erase_guard_refuses_mass_deletion(tmp_path, anonymizer):
    b = Local(tmp_path)
    for i in range(12):
        b.put(f"{i}.png", png(2 * i + 1))
    w, th = _watcher(tmp_path, anonymizer)
    try:
        wait_for(lambda: w.counts["ok"] >= 12, 30, "12 outputs")
        for i in range(12):
            b.delete(f"{i}.png")
        wait_for(lambda: w.last_error and "not erasing" in w.last_error, 10, "the guard")
    finally:
        w.stop()
        th.join(timeout=30)
    assert len(b.outputs()) == 12 and w.counts["erased"] == 0
