"""The leak metric's controls on an annotated set, without any detector (anon_core/evaluation/leak.py):
an unmasked JPEG re-encode of every image must leak ~100 % of the faces, a solid fill and a strong blur of every
GT box 0 %, the smoothest decile of faces included; by size band.

    python benchmarks/leak_controls.py --data ../shared/data/faces --out benchmarks/results/leak_controls_faces.json

(`anon validate --controls` reports the same controls beside the pipeline's own leak.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_core.evaluation import load_jsonl  # noqa: E402
from anon_core.evaluation.datasets import load_rgb  # noqa: E402
from anon_core.evaluation.leak import ControlLeak  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/faces")
    ap.add_argument("--out", default="benchmarks/results/leak_controls_faces.json")
    ap.add_argument("--jpeg-quality", type=int, default=92, help="the pipeline's image.jpeg_quality default")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    gts = load_jsonl(args.data)
    if args.limit:
        gts = gts[: args.limit]
    t0 = time.perf_counter()
    ctl = ControlLeak(args.jpeg_quality)
    for g in gts:
        ctl.add(load_rgb(g.path), g)
    res = {"data": str(Path(args.data).resolve()), **ctl.result(), "seconds": round(time.perf_counter() - t0, 1),
           "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k]["leak_rate"] for k in ("reencode", "fill", "blur")}))


if __name__ == "__main__":
    main()
