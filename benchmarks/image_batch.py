"""Cross-asset image batching in the archive actor: images/s with `job.image_batch` on and off, same run.

The actor class is called directly, as Ray Data calls it (no cluster: the comparison is the actor's own work),
over N photos (scikit-image astronaut/coffee/chelsea, resized to one size, JPEG), alternating the two settings
`--repeat` times so machine load hits both alike. Outputs of the two settings are compared pixel by pixel.

    .venv/bin/python benchmarks/image_batch.py [--n 16] [--size 1280x720] [--repeat 3] [--set policy=faces]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anon_core.config import AnonConfig  # noqa: E402
from jobs.archive.actor import AnonymizeActor  # noqa: E402


def photos(n: int, size: tuple[int, int]) -> list[bytes]:
    from skimage import data

    base = [data.astronaut(), data.coffee(), data.chelsea()]
    out = []
    for i in range(n):
        im = Image.fromarray(base[i % 3]).resize(size)
        if i >= 3:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else im
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90 - i % 5)  # distinct bytes per asset
        out.append(buf.getvalue())
    return out


def run(cfg: dict, src: Path, out: Path, batch: bool) -> float:
    actor = AnonymizeActor(cfg, {"input": str(src), "output": str(out), "image_batch": batch}, run_id="bench")
    names = sorted(p.name for p in src.iterdir())
    rows = {"rel": np.array(names), "path": np.array([str(src / n) for n in names]),
            "size": np.array([(src / n).stat().st_size for n in names]), "prev": np.array([""] * len(names)),
            "seg": np.array([-1] * len(names))}
    actor(rows)  # warm-up (model load, first inference) on the same batch
    t0 = time.perf_counter()
    res = actor(rows)
    dt = time.perf_counter() - t0
    assert set(res["status"]) == {"ok"}, res["status"]
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", action="append", default=["policy=faces"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    overrides: dict = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = v
    cfg = AnonConfig.from_dict(overrides).to_dict()
    times: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, data in enumerate(photos(args.n, (w, h))):
            (src / f"p{i:03d}.jpg").write_bytes(data)
        for r in range(args.repeat):
            for mode in ("batched", "one_by_one") if r % 2 == 0 else ("one_by_one", "batched"):
                times[mode].append(run(cfg, src, Path(tmp) / f"out-{mode}-{r}", mode == "batched"))
        a, b = Path(tmp) / "out-batched-0", Path(tmp) / "out-one_by_one-0"
        diffs = [float(np.abs(np.asarray(Image.open(a / n), np.int16) - np.asarray(Image.open(b / n), np.int16))
                       .mean()) for n in sorted(os.listdir(src))]
    res = {"n": args.n, "size": args.size, "set": args.set, "load_1min": os.getloadavg()[0],
           "images_per_s": {k: round(args.n / float(np.median(v)), 3) for k, v in times.items()},
           "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "max_mean_abs_pixel_diff": round(max(diffs), 4)}
    res["speedup"] = round(res["images_per_s"]["batched"] / res["images_per_s"]["one_by_one"], 3)
    line = json.dumps(res)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
