"""Default-policy latency at 720p for plate search variants, interleaved in one process (fair under load).

    python benchmarks/plates_latency.py --repeat 5

Same photos as benchmarks/image_latency.py (skimage astronaut, coffee, chelsea at 1280x720, JPEG). Variants:
`before` (the PP-OCR plate search as of 2026-11-26: no reading check, no pixel budget, threshold 0.5), `default`
(permissive default now), `optin` (AGPL-3.0 allowed: the YOLO plate model). Each image is run once per variant in
turn, so all variants see the same machine load; wall and process-CPU p50/p95 per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from anon_core.audit import AuditRecord
from anon_core.licenses import PERMISSIVE
from anon_core.pipeline import Anonymizer
from benchmarks.image_latency import photos
from jobs.config import load_config

VARIANTS = {
    "before": ["detectors.plate.params.verify=false", "detectors.plate.params.weak_max_pixels=0",
               "detectors.plate.params.threshold=0.5"],
    "default": [],
    "optin": [f"models.allow_licenses=[{','.join([*PERMISSIVE, 'AGPL-3.0'])}]"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/plates_latency.json")
    args = ap.parse_args()
    images = photos((1280, 720))
    anon = {k: Anonymizer(load_config(v)) for k, v in VARIANTS.items()}
    for a in anon.values():
        a.process_bytes(images[0], AuditRecord())  # warm-up
    wall: dict = {k: [] for k in anon}
    cpu: dict = {k: [] for k in anon}
    for _ in range(args.repeat):
        for data in images:
            for k, a in anon.items():
                rec = AuditRecord()
                t0, c0 = time.perf_counter(), time.process_time()
                assert a.process_bytes(data, rec) is not None, rec.error
                wall[k].append((time.perf_counter() - t0) * 1000)
                cpu[k].append((time.process_time() - c0) * 1000)
    out = {"load_avg_1min": round(__import__("os").getloadavg()[0], 1), "n_per_variant": len(wall["default"])}
    for k in anon:
        out[k] = {f"{n}_{p}_ms": round(float(np.percentile(v[k], int(p[1:]))), 1)
                  for n, v in (("wall", wall), ("cpu", cpu)) for p in ("p50", "p95")}
        out[k]["models"] = sorted({m["name"] for m in anon[k].models()})
    print(json.dumps(out, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
