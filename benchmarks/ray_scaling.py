"""Ray job scaling on this machine (1 vs 2 actors) and a capacity plan derived from the measured figures.

    .venv/bin/python benchmarks/ray_scaling.py --images 40 --clips 2 --clip-seconds 3 --actors 1 2

Per actor count: end-to-end wall time (Ray start, model load, listing, manifest) and the steady-state rate
(first asset start to last asset finish, from the manifest). Images and video are measured in separate runs so
each gets its own rate. The capacity plan scales the steady-state per-node rate to nodes x hours for 1 PB of
1080p video and 1 billion images; its assumptions are printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def build(root: Path, images: int, clips: int, clip_seconds: float, image_size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    from tests.video_helpers import make_clip

    base = np.asarray(Image.fromarray(data.astronaut()).resize(image_size))
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.fromarray(np.roll(base, i * 13, axis=1)).save(root / "images" / f"img{i:04d}.jpg", quality=90)
    (root / "video").mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        make_clip(str(root / "video" / f"clip{i:02d}.mp4"), n_frames=int(30 * clip_seconds), size=(1920, 1080),
                  fps=30, face=120 + 10 * i, audio=True)


def measure(inp: Path, out: Path, actors: int, policy: str, batch: int) -> dict:
    import pyarrow.parquet as pq

    from anon_core.audit import SCHEMA
    from jobs.anonymize import run_job
    from jobs.config import compose_dict

    cfg = compose_dict([f"input={inp}", f"output={out}", f"policy={policy}", f"job.actors={actors}",
                        f"job.batch_size={batch}", "job.progress=false", "job.resume=false",
                        f"job.run_id=bench-{actors}"], config_name="job")
    t0 = time.perf_counter()
    s = run_job(cfg)
    wall = time.perf_counter() - t0
    t = pq.read_table(str(out / "_manifests" / f"run_id=bench-{actors}"), schema=SCHEMA).to_pylist()
    start = min(r["started_at"] for r in t)
    end = max(r["finished_at"] for r in t)
    steady = (end - start).total_seconds()
    frames = sum(r["frames"] or 0 for r in t if r["status"] == "ok")
    return {"actors": actors, "assets": s["assets"], "ok": s["ok"], "failed": s["failed"], "frames": frames,
            "wall_s": round(wall, 2), "steady_s": round(steady, 2),
            "assets_per_s": round(s["assets"] / steady, 3), "frames_per_s": round(frames / steady, 2),
            "bytes_in": s["bytes_in"]}


def capacity(images_per_s_node: float, fps_node: float, cores_here: int, cores_node: int) -> dict:
    """Nodes x hours for 1 PB of 1080p video and 1e9 images; linear scaling per core is an assumption."""
    scale = cores_node / cores_here
    video_bitrate_bps = 8e6  # 1080p30 H.264 archive, ~8 Mbit/s (assumption)
    fps_source = 30.0
    seconds_of_video = 1e15 * 8 / video_bitrate_bps
    frames = seconds_of_video * fps_source
    node_fps = fps_node * scale
    node_ips = images_per_s_node * scale
    return {
        "assumptions": {"video_bitrate_mbps": video_bitrate_bps / 1e6, "fps": fps_source,
                        "cores_per_node": cores_node, "scaling": f"x{scale:g} from {cores_here} measured cores"},
        "video_1PB": {"hours_of_video": round(seconds_of_video / 3600), "frames": f"{frames:.3g}",
                      "node_fps": round(node_fps, 1), "node_hours": round(frames / node_fps / 3600)},
        "images_1e9": {"node_images_per_s": round(node_ips, 1), "node_hours": round(1e9 / node_ips / 3600)},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--image-size", default="1280x720")
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--clip-seconds", type=float, default=3.0)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--policy", default="faces")
    ap.add_argument("--cores-per-node", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    w, h = (int(v) for v in args.image_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="anon-raybench-"))
    build(work / "in_img", args.images, 0, 0, (w, h))
    build(work / "in_vid", 0, args.clips, args.clip_seconds, (w, h))
    load0 = os.getloadavg()
    results = {"images": [], "video": []}
    for n in args.actors:
        results["images"].append(measure(work / "in_img", work / f"out_img{n}", n, args.policy, 8))
        print(json.dumps({"kind": "images", **results["images"][-1]}), flush=True)
        results["video"].append(measure(work / "in_vid", work / f"out_vid{n}", n, args.policy, 1))
        print(json.dumps({"kind": "video", **results["video"][-1]}), flush=True)
    cores = os.cpu_count() or 1
    report = {"machine": {"cores": cores, "platform": platform.platform(), "loadavg_before": load0,
                          "loadavg_after": os.getloadavg()},
              "config": vars(args), "results": results}
    for kind, key in (("images", "assets_per_s"), ("video", "frames_per_s")):
        rows = {r["actors"]: r[key] for r in results[kind]}
        if 1 in rows and 2 in rows and rows[1]:
            report[f"{kind}_scaling_efficiency_1_to_2"] = round(rows[2] / (2 * rows[1]), 3)
    best_ips = max(r["assets_per_s"] for r in results["images"])
    best_fps = max(r["frames_per_s"] for r in results["video"])
    report["capacity_plan"] = capacity(best_ips, best_fps, cores, args.cores_per_node)
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
