"""Process CPU time per 1280x720 JPEG through `Anonymizer.process_bytes` (all threads counted): a load-robust
figure for comparing two commits back to back (`git checkout A; run; git checkout B; run`).

    .venv/bin/python benchmarks/cpu_per_image.py [--set policy=faces] [--repeat 4]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.config import AnonConfig  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=["policy=faces"])
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    from skimage import data

    jpegs = []
    for f in (data.astronaut, data.coffee, data.chelsea):
        buf = io.BytesIO()
        Image.fromarray(f()).resize((1280, 720)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    an = Anonymizer(AnonConfig.from_dict(dict(kv.split("=", 1) for kv in args.set)))
    for d in jpegs:  # warm-up: model load, first inference
        an.process_bytes(d, AuditRecord())
    cpu = []
    for _ in range(args.repeat):
        for d in jpegs:
            t0 = time.process_time()
            an.process_bytes(d, AuditRecord())
            cpu.append((time.process_time() - t0) * 1000)
    print(json.dumps({"set": args.set, "n": len(cpu), "cpu_p50_ms": round(float(np.median(cpu)), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
