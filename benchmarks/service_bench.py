"""Service benchmark: POST /v1/anonymize requests/s for 720p JPEGs with N concurrent clients, and WebSocket stream
latency (p50/p95) at 720p.

    .venv/bin/python benchmarks/service_bench.py                       # starts `anon serve` itself (policy=faces)
    .venv/bin/python benchmarks/service_bench.py --clients 1,2,4 --duration 20 --frames 250 --workers 2
    .venv/bin/python benchmarks/service_bench.py --url http://127.0.0.1:8080 --key KEY   # an already running server

The server runs as a separate process (`python -m jobs.cli serve`), so client work does not share its GIL; on a
small machine clients and server still share the CPUs. Results: stdout and benchmarks/results/service_bench_*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.service.child import start_serve  # noqa: E402 (after the path insert)


def frame_720p(width: int, height: int, shift: int = 0, quality: int = 85) -> bytes:
    """The astronaut photo scaled to the frame height, centred on a gradient background (one face per frame)."""
    import cv2
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    side = min(height, width)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                   np.full_like(xx, 128)], -1).astype(np.uint8)
    x0 = (width - side) // 2 + shift
    x0 = max(0, min(width - side, x0))
    bg[(height - side) // 2:(height - side) // 2 + side, x0:x0 + side] = img
    buf = io.BytesIO()
    Image.fromarray(bg).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def start_server(key: str, workers: int, policy: str, extra_sets: list[str]) -> tuple[subprocess.Popen, str]:
    args = ["--workers", str(workers), "--set", f"policy={policy}", *sum((["--set", x] for x in extra_sets), [])]
    try:
        return start_serve(args, {"ANON_API_KEYS": key})
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def bench_requests(url: str, key: str, body: bytes, clients: int, duration_s: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = c.post("/v1/anonymize", content=body, headers={"Content-Type": "image/jpeg"})
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "seconds": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 2), "latency_ms_p50": pct(lat, 50),
            "latency_ms_p95": pct(lat, 95), "latency_ms_mean": round(statistics.fmean(lat), 1) if lat else None}


def bench_stream(url: str, key: str, frames: list[bytes], params: dict, fps: float | None) -> dict:
    from jobs.service.client import stream_frames

    res = asyncio.run(stream_frames(url.replace("http://", "ws://"), key, frames, params, fps=fps, timeout_s=900))
    st = res.stats or {}
    return {"params": params, "paced_fps": fps, "frames_sent": len(frames), "frames_returned": len(res.frames),
            "in_order": [t for t, _ in res.frames] == sorted(t for t, _ in res.frames),
            "dropped": len(res.dropped), "errors": len(res.errors), "seconds": round(res.seconds, 2),
            "throughput_fps": round(len(res.frames) / res.seconds, 2) if res.seconds else None,
            "server_latency_ms": st.get("latency_ms"), "server_process_ms": st.get("process_ms"),
            "client_latency_ms_p50": pct(res.client_latency_ms, 50),
            "client_latency_ms_p95": pct(res.client_latency_ms, 95)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="benchmark a running server instead of starting one")
    ap.add_argument("--key", help="API key for --url")
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--stream-fps", type=float, default=25.0, help="pace of the live (drop) stream run")
    ap.add_argument("--workers", type=int, default=2, help="server anonymization threads")
    ap.add_argument("--policy", default="faces")
    ap.add_argument("--set", action="append", default=[], help="extra server config overrides")
    ap.add_argument("--skip-requests", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    proc = None
    key = args.key or secrets.token_urlsafe(24)
    if args.url:
        url = args.url.rstrip("/")
    else:
        proc, url = start_server(key, args.workers, args.policy, args.set)
    body = frame_720p(args.width, args.height)
    report: dict = {"when": datetime.now(UTC).isoformat(), "frame": f"{args.width}x{args.height}",
                    "jpeg_bytes": len(body), "policy": args.policy, "server_workers": args.workers,
                    "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "requests": [], "stream": []}
    try:
        import httpx

        for _ in range(3):  # warm-up: first calls pay for lazy allocations
            httpx.post(url + "/v1/anonymize", content=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        if not args.skip_requests:
            for n in (int(x) for x in args.clients.split(",") if x):
                r = bench_requests(url, key, body, n, args.duration)
                report["requests"].append(r)
                print(f"[requests] {args.width}x{args.height} clients={n}: {r['requests_per_s']} req/s, "
                      f"p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms, errors {r['errors']}", flush=True)
        if not args.skip_stream:
            frames = [frame_720p(args.width, args.height, shift=int(8 * np.sin(i / 15))) for i in range(args.frames)]
            for params, fps in (({"backpressure": "queue", "queue": 4}, None),
                                ({"backpressure": "drop", "queue": 2}, args.stream_fps)):
                s = bench_stream(url, key, frames, params, fps)
                report["stream"].append(s)
                lat = s["server_latency_ms"] or {}
                print(f"[stream] {args.width}x{args.height} {params} paced={fps}: returned {s['frames_returned']}/"
                      f"{s['frames_sent']} in order={s['in_order']}, dropped {s['dropped']}, "
                      f"{s['throughput_fps']} fps, server latency p50 {lat.get('p50')} ms p95 {lat.get('p95')} ms, "
                      f"process p50 {(s['server_process_ms'] or {}).get('p50')} ms", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    report["load_avg_after"] = os.getloadavg()
    report["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report["server_sets"] = list(args.set)
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out) / f"service_bench_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
