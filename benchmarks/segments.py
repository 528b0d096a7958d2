"""Long video across actors: segmented vs unsegmented wall time, output equality, and a killed worker.

    .venv/bin/python benchmarks/segments.py --minutes 10 --size 1280x720 --fps 24 --segment-s 60 --actors 2

Generates a clip with audio (tests/segment_helpers.py: the skimage astronaut's face sweeping over a textured
background, a keyframe every 2 s, AAC tone), then runs the archive job three times with `job.actors=N`:
1. unsegmented (`job.segment_s=0`), 2. segmented, 3. segmented again into a fresh output with one actor
process SIGKILLed while it is inside a segment. Reports wall times, the ratio, whether frame count,
per-frame timestamps and audio packets of (2) and (3) equal (1)'s, and per segment how many times it was
started (only the killed one may be started twice).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _job(inp: Path, out: Path, run_id: str, args, segment_s: float) -> list[str]:
    return [sys.executable, "jobs/anonymize.py", f"input={inp}", f"output={out}", f"policy={args.policy}",
            f"job.actors={args.actors}", "job.batch_size=1", f"job.num_cpus={args.num_cpus}",
            f"job.segment_s={segment_s}", f"job.segment_margin_s={args.margin_s}", f"job.run_id={run_id}",
            "job.progress=false", "job.retries=0", *args.set]


def _run(cmd: list[str], log: Path) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    if rc:
        sys.exit(f"job failed ({rc}): {text[-3000:]}")
    return json.loads(text.strip().splitlines()[-1]), wall


def _kill_run(cmd: list[str], out: Path, log: Path) -> tuple[dict, float, dict]:
    from tests.test_ray_job import _actor_pids

    stage = out / "_manifests" / "_segments"
    t0 = time.perf_counter()
    fh = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    event: dict = {}
    try:
        while proc.poll() is None and "killed_pid" not in event:
            starts = {p.name.split(".start-")[0] for p in stage.rglob("seg-*.start-*")} if stage.exists() else set()
            done = {p.stem for p in stage.rglob("seg-*.json")} if stage.exists() else set()
            busy = starts - done
            if done and busy:  # at least one segment finished and another is being anonymized
                pids = _actor_pids(proc.pid)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)  # an actor process of the job this benchmark started
                    event.update(killed_pid=pids[0], at_s=round(time.perf_counter() - t0, 1),
                                 done_before=sorted(done), busy=sorted(busy))
            time.sleep(0.2)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        fh.close()
    wall = time.perf_counter() - t0
    text = log.read_text()
    if rc:
        sys.exit(f"job failed ({rc}): {text[-3000:]}")
    starts: dict[str, int] = {}
    for p in stage.rglob("seg-*.start-*"):
        name = p.name.split(".start-")[0]
        starts[name] = starts.get(name, 0) + 1
    event["starts_per_segment"] = dict(sorted(starts.items()))
    return json.loads(text.strip().splitlines()[-1]), wall, event


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--segment-s", type=float, default=60)
    ap.add_argument("--margin-s", type=float, default=1.0)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--num-cpus", type=float, default=0.5)
    ap.add_argument("--policy", default="faces")
    ap.add_argument("--set", nargs="*", default=[], help="extra job overrides")
    ap.add_argument("--workdir", default="/tmp/anon_segments_bench")
    ap.add_argument("--no-kill", action="store_true")
    args = ap.parse_args()
    from tests.segment_helpers import make_gop_clip
    from tests.video_helpers import packet_bytes, read_video

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    w, h = (int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    make_gop_clip(str(work / "in" / "long.mp4"), args.minutes * 60, fps=args.fps, size=(w, h), face=h // 6,
                  gop_s=2.0, crf=26)
    res = {"clip": {"minutes": args.minutes, "size": args.size, "fps": args.fps, "gop_s": 2.0, "audio": "aac",
                    "bytes": (work / "in" / "long.mp4").stat().st_size,
                    "generate_s": round(time.perf_counter() - t0, 1)},
           "actors": args.actors, "segment_s": args.segment_s, "margin_s": args.margin_s,
           "loadavg_start": os.getloadavg()}
    s1, w1 = _run(_job(work / "in", work / "whole", "whole", args, 0), work / "whole.log")
    res["unsegmented"] = {"wall_s": round(w1, 1), "ok": s1["ok"], "frames": s1["frames"]}
    s2, w2 = _run(_job(work / "in", work / "seg", "seg", args, args.segment_s), work / "seg.log")
    res["segmented"] = {"wall_s": round(w2, 1), "ok": s2["ok"], "segments": s2.get("segments")}
    res["ratio_segmented_over_unsegmented"] = round(w2 / w1, 3)
    fa, ta, ra = read_video(str(work / "whole" / "long.mp4"))
    fb, tb, rb = read_video(str(work / "seg" / "long.mp4"))
    res["equal"] = {"frames": len(fa) == len(fb), "n_frames": len(fa), "timestamps": ta == tb, "rotation": ra == rb,
                    "audio_packets": packet_bytes(str(work / "seg" / "long.mp4"))
                    == packet_bytes(str(work / "in" / "long.mp4"))}
    del fa, fb
    if not args.no_kill:
        s3, w3, ev = _kill_run(_job(work / "in", work / "kill", "kill", args, args.segment_s), work / "kill",
                               work / "kill.log")
        fc, tc, _ = read_video(str(work / "kill" / "long.mp4"))
        redone = [k for k, n in ev["starts_per_segment"].items() if n > 1]
        res["killed_worker"] = {**ev, "wall_s": round(w3, 1), "ok": s3["ok"], "segments_started_twice": redone,
                                "only_busy_redone": set(redone) <= set(ev.get("busy", [])),
                                "frames_equal": len(fc) == len(tb), "timestamps_equal": tc == tb}
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1, default=str))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"segments_{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
