"""End-to-end latency of still images (bytes in -> anonymized bytes out), p50/p95, with deface side by side.

Images are real photos from scikit-image (astronaut, coffee, chelsea) upscaled to 1280x720 and
1920x1080 and saved as JPEG; each is processed `--repeat` times after one warm-up.

    python benchmarks/image_latency.py --repeat 20
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anon_core.audit import AuditRecord
from anon_core.pipeline import Anonymizer
from jobs.config import load_config


def photos(size: tuple[int, int]) -> list[bytes]:
    from skimage import data

    out = []
    for img in (data.astronaut(), data.coffee(), data.chelsea()):
        buf = io.BytesIO()
        Image.fromarray(img).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "mean_ms": round(float(a.mean()), 1), "n": len(ms)}


def bench_anon(sets: list[str], images: list[bytes], repeat: int) -> tuple[dict, dict]:
    anonymizer = Anonymizer(load_config(sets))
    anonymizer.process_bytes(images[0], AuditRecord())  # warm-up: session init, allocations
    ms, cpu, stages = [], [], {}
    for _ in range(repeat):
        for data in images:
            rec = AuditRecord()
            t0, c0 = time.perf_counter(), time.process_time()
            out = anonymizer.process_bytes(data, rec)
            ms.append((time.perf_counter() - t0) * 1000)
            # CPU time of all threads: a load-independent measure on a shared machine.
            cpu.append((time.process_time() - c0) * 1000)
            assert out is not None, rec.error
            for k, v in rec.timings_ms.items():
                stages.setdefault(k, []).append(v)
    result = percentiles(ms)
    result["cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 1)
    result["cpu_p95_ms"] = round(float(np.percentile(cpu, 95)), 1)
    return result, {k: round(float(np.median(v)), 1) for k, v in stages.items()}


def bench_deface(images: list[bytes], repeat: int) -> dict:
    """deface 1.5's CLI on the same JPEGs (its own process; per-image time from the total, minus start-up)."""
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, data in enumerate(images * repeat):
            p = Path(d) / f"img{i}.jpg"
            p.write_bytes(data)
            paths.append(str(p))
        exe = Path(sys.executable).with_name("deface")  # the venv's console script, PATH or not
        cmd = [str(exe), "--thresh", "0.2", "--backend", "onnxrt"]  # writes <name>_anonymized.jpg beside each
        t0 = time.perf_counter()
        subprocess.run([*cmd, paths[0]], check=True, capture_output=True)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*cmd, *paths], check=True, capture_output=True)
        total = time.perf_counter() - t0
    return {"mean_ms": round((total - startup) / len(paths) * 1000, 1), "n": len(paths)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/image_latency.json")
    args = ap.parse_args()
    report = {"machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}",
              "config": args.set}
    for name, size in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
        images = photos(size)
        total, stages = bench_anon(args.set, images, args.repeat)
        report[name] = {"anon": total, "anon_stages_median_ms": stages}
        if not args.no_deface:
            report[name]["deface"] = bench_deface(images, args.repeat)
        print(name, json.dumps(report[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
