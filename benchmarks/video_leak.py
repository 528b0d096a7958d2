"""Frame-level leak rate on videos with known boxes: anon with tracking on vs. off, and deface 1.5.

Videos:
- pan/zoom: a virtual camera pans and zooms over annotated ../shared/data/faces photos, so every
  frame's face boxes are known exactly (the photo's boxes mapped through the crop);
- face_video: the ../shared/data/face_video sequences (one labelled face per frame), as 25 fps MP4.
Leak rate = leaked / evaluated (frame, object) pairs, objects >= 10 px, measured on pixels by
anon_core.evaluation.leak (SSIM + retained detail of the GT region, output vs. decoded input).

    .venv/bin/python benchmarks/video_leak.py --pan-videos 8 --frames 48
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.config import AnonConfig  # noqa: E402
from anon_core.evaluation.groundtruth import GroundTruthImage  # noqa: E402
from anon_core.evaluation.leak import leak_video  # noqa: E402
from anon_core.media.probe import MediaType  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402
from anon_core.video import anonymize_video  # noqa: E402
from jobs.config import load_config  # noqa: E402

OUT_W, OUT_H = 480, 360


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    with av.open(str(path), "w") as oc:
        s = oc.add_stream("libx264", rate=fps, options={"crf": "16", "preset": "veryfast"})
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            oc.mux(s.encode(vf))
        oc.mux(s.encode(None))


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def pan_zoom(img: np.ndarray, boxes: np.ndarray, n: int, rng: np.random.Generator):
    """A camera path from one corner to another with a zoom change; returns frames and per-frame boxes."""
    H, W = img.shape[:2]
    aspect = OUT_W / OUT_H
    z0, z1 = rng.uniform(0.55, 0.95, 2)  # crop width as a share of the image width (zoom in/out)
    c0 = rng.uniform([0.3, 0.3], [0.7, 0.7]) * [W, H]
    c1 = rng.uniform([0.3, 0.3], [0.7, 0.7]) * [W, H]
    frames, per_frame = [], []
    for i in range(n):
        t = i / max(n - 1, 1)
        cw = (z0 + (z1 - z0) * t) * W
        ch = cw / aspect
        if ch > H:
            ch, cw = H, H * aspect
        cx, cy = c0 + (c1 - c0) * t
        x0 = float(np.clip(cx - cw / 2, 0, W - cw))
        y0 = float(np.clip(cy - ch / 2, 0, H - ch))
        sx, sy = OUT_W / cw, OUT_H / ch
        m = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float64)
        frames.append(cv2.warpAffine(img, m, (OUT_W, OUT_H), flags=cv2.INTER_AREA))
        b = boxes.copy().astype(np.float64)
        b[:, [0, 2]] = (b[:, [0, 2]] - x0) * sx
        b[:, [1, 3]] = (b[:, [1, 3]] - y0) * sy
        b = np.clip(b, 0, [OUT_W, OUT_H, OUT_W, OUT_H])
        per_frame.append(b)
    return frames, per_frame


def make_pan_videos(data: Path, work: Path, count: int, n: int, seed: int) -> list[tuple[Path, list]]:
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines() if line.strip()]
    # photos with a handful of reasonably sized faces, so the crop keeps some >= 10 px
    good = [r for r in rows if 1 <= len(r["boxes"]) <= 12
            and np.median([b[2] - b[0] for b in r["boxes"]]) >= 30]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(good), size=min(count, len(good)), replace=False)
    out = []
    for k in picks:
        r = good[int(k)]
        img = cv2.cvtColor(cv2.imread(str(data / r["file"])), cv2.COLOR_BGR2RGB)
        boxes = np.asarray(r["boxes"], np.float64)
        ignore = np.asarray(r.get("ignore") or np.zeros((0, 4)), np.float64).reshape(-1, 4)
        frames, gt = pan_zoom(img, np.concatenate([boxes, ignore]), n, rng)
        nb = len(boxes)
        path = work / f"pan_{Path(r['file']).stem}.mp4"
        write_mp4(path, frames)
        out.append((path, [(g[:nb], g[nb:]) for g in gt]))
    return out


def face_video_clips(data: Path, work: Path, max_frames: int) -> list[tuple[Path, list]]:
    out = []
    for seq in sorted(p for p in data.iterdir() if p.is_dir()):
        imgs = sorted((seq / "img1").glob("*.jpg"))[:max_frames]
        gt: dict[int, list] = {}
        for line in (seq / "gt" / "gt.txt").read_text().splitlines():
            f, _tid, x, y, w, h = (float(v) for v in line.split(",")[:6])
            gt.setdefault(int(f), []).append([x, y, x + w, y + h])
        frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in imgs]
        path = work / f"{seq.name}.mp4"
        write_mp4(path, frames)
        boxes = [(np.asarray(gt.get(i + 1, []), np.float64).reshape(-1, 4), np.zeros((0, 4))) for i in range(len(imgs))]
        out.append((path, boxes))
    return out


def score(src: Path, out: Path, gt: list) -> dict:
    orig, anon = decode(src), decode(out)
    if len(orig) != len(anon):
        raise RuntimeError(f"{out.name}: {len(anon)} frames, input has {len(orig)}")
    h, w = orig[0].shape[:2]
    items = []
    for i, (o, a) in enumerate(zip(orig, anon)):
        a = a[:h, :w]  # deface's ffmpeg writer pads to a multiple of 16; the picture is top-left
        boxes, ignore = gt[i]
        g = GroundTruthImage(file=f"{src.name}#{i}", width=w, height=h, boxes=boxes, ignore=ignore,
                             track_ids=np.arange(len(boxes)))
        items.append((i, o, a, g))
    return leak_video(items)


def deface_startup(work: Path, src: Path, runs: int = 3) -> float:
    """Median wall time of deface on a one-frame clip cut from `src` (its fixed per-file cost)."""
    one = work / "deface_one_frame.mp4"
    write_mp4(one, decode(src)[:1])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "deface"), "--keep-audio", "-o", str(work / "one.out.mp4"),
                        str(one)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def aggregate(results: list[dict]) -> dict:
    ev = sum(r["n_evaluated"] for r in results)
    lk = sum(r["n_leaked"] for r in results)
    over = [r["over_masking"] for r in results if r.get("over_masking") is not None]
    return {"n_evaluated": ev, "n_leaked": lk, "leak_rate": lk / ev if ev else None,
            "max_longest_leak_run": max((r["max_longest_leak_run"] for r in results), default=0),
            # share of pixels outside every annotated/ignored face that the output changed (collateral masking)
            "over_masking": round(float(np.mean(over)), 4) if over else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", default=str(ROOT.parent / "shared/data/faces"))
    ap.add_argument("--face-video", default=str(ROOT.parent / "shared/data/face_video"))
    ap.add_argument("--pan-videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--fv-max-frames", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="AnonConfig overrides as JSON (detectors, masks, ...)")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra anon variant NAME=JSON (AnonConfig overrides on top of --config)")
    ap.add_argument("--preset", action="append", default=[],
                    help="extra anon variant NAME=OVERRIDE[;OVERRIDE...] with CLI --set overrides, e.g. "
                         "video_fast=detector=video_fast (policy=faces is implied)")
    ap.add_argument("--no-tracking-off", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="anon-vleak-"))
    sets = {
        "pan_zoom": make_pan_videos(Path(args.faces), work, args.pan_videos, args.frames, args.seed),
        "face_video": face_video_clips(Path(args.face_video), work, args.fv_max_frames),
    }
    base = {"policy": "faces", **json.loads(args.config)}
    variants = {
        "tracking_on": Anonymizer(AnonConfig.from_dict(base)),
        # raw per-frame detections only: no look-ahead, no lead/trail, no gap filling
        "tracking_off": Anonymizer(AnonConfig.from_dict({**base, "video": {
            "lookahead_s": 0.0, "lead_s": 0.0, "trail_s": 0.0, "max_gap_s": 0.0}})),
    }
    if args.no_tracking_off:
        del variants["tracking_off"]
    for v in args.variant:
        name, extra = v.split("=", 1)
        over = json.loads(extra)
        merged = {**base, **over, "video": {**base.get("video", {}), **over.get("video", {})}}
        variants[name] = Anonymizer(AnonConfig.from_dict(merged))
    for v in args.preset:
        name, overrides = v.split("=", 1)
        variants[name] = Anonymizer(load_config(["policy=faces", *overrides.split(";")]))
    for an in variants.values():  # models load on first use: not part of any clip's time
        an.detect([np.zeros((OUT_H, OUT_W, 3), np.uint8)])
    report: dict = {"args": vars(args), "load_avg_before": os.getloadavg()}
    stages: dict[str, dict] = {}
    for set_name, clips in sets.items():
        per: dict[str, list] = {k: [] for k in [*variants, *([] if args.no_deface else ["deface"])]}
        fps: dict[str, list] = {k: [] for k in per}
        for src, gt in clips:
            for name, an in variants.items():
                out = work / f"{src.stem}.{name}.mp4"
                rec = AuditRecord()
                t0 = time.perf_counter()
                anonymize_video(an, str(src), str(out), MediaType("video", "mp4"), rec)
                fps[name].append(rec.frames / (time.perf_counter() - t0))
                per[name].append(score(src, out, gt))
                st = stages.setdefault(set_name, {}).setdefault(name, {"frames": 0, "timings_ms": {},
                                                                      "adaptive": []})
                st["frames"] += rec.frames
                for k, v in rec.timings_ms.items():
                    st["timings_ms"][k] = round(st["timings_ms"].get(k, 0.0) + v, 1)
                if rec.extra["video"].get("adaptive"):
                    st["adaptive"].append({"clip": src.name, **rec.extra["video"]["adaptive"]})
            if not args.no_deface:
                out = work / f"{src.stem}.deface.mp4"
                t0 = time.perf_counter()
                subprocess.run([str(Path(sys.executable).parent / "deface"), "--keep-audio", "-o", str(out), str(src)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                fps["deface"].append(len(gt) / (time.perf_counter() - t0))
                per["deface"].append(score(src, out, gt))
            print(src.name, {k: round(v[-1]["leak_rate"] or 0, 4) for k, v in per.items()}, flush=True)
        report[set_name] = {k: {**aggregate(v), "mean_fps": round(float(np.mean(fps[k])), 2),
                                "fps_per_clip": [round(float(f), 2) for f in fps[k]],
                                "leak_per_clip": [r["leak_rate"] for r in v]} for k, v in per.items()}
        if not args.no_deface:  # same-run ratio per clip (anon fps / deface fps), the spread over clips
            for k in variants:
                r = [a / d for a, d in zip(fps[k], fps["deface"])]
                report[set_name][k]["vs_deface_per_clip"] = [round(x, 2) for x in r]
                report[set_name][k]["vs_deface_mean_fps_ratio"] = round(float(np.mean(fps[k]) / np.mean(
                    fps["deface"])), 2)
        report[set_name]["stages"] = stages.get(set_name, {})
        if not args.no_deface:
            # deface is a CLI: its per-file time includes ~0.5 s of start-up (imports, model load), which anon pays
            # once per worker. Also report its fps without that, measured on a one-frame clip.
            startup = deface_startup(work, clips[0][0])
            report[set_name]["deface"]["startup_s"] = round(startup, 3)
            report[set_name]["deface"]["mean_fps_excl_startup"] = round(float(np.mean(
                [len(gt) / max(len(gt) / f - startup, 1e-6) for (_, gt), f in zip(clips, fps["deface"])])), 2)
        print(set_name, json.dumps(report[set_name]), flush=True)
    report["load_avg_after"] = os.getloadavg()
    report["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    os.makedirs(args.out, exist_ok=True)
    name = Path(args.out) / f"video_leak_{time.strftime('%Y%m%dT%H%M%S')}.json"
    name.write_text(json.dumps(report, indent=1))
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
