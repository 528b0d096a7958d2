"""Video throughput: anon vs. deface 1.5 (--keep-audio) on the same files in the same run.

Clips: every file in ../shared/data/video/clips (long ones trimmed to --trim-s by packet copy, so
both tools see the same bytes) plus generated 720p and 1080p clips (a face moving, with audio).
For anon's outputs the container invariants are checked too (frames, timestamps, duration, audio
bit-exact, rotation). Peak RSS of the pipeline alone (no detector) on a short and a 12x longer
clip shows that memory does not grow with length.

    .venv/bin/python benchmarks/video_fps.py --trim-s 15 --gen-s 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.media.probe import MediaType  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402
from anon_core.video import anonymize_video  # noqa: E402
from jobs.config import load_config  # noqa: E402
from tests.video_helpers import duration_s, make_clip, packet_bytes, read_video  # noqa: E402

# Named configurations as `--set` overrides (the same keys as the CLI and conf/).
CONFIGS = {
    "default": [],  # detector=hybrid, adaptive detection (keyframes + crops), GOP copy, weak tracks
    "before18": ["video.keyframe_s=0", "video.gop_copy=false"],  # full detector on every frame, re-encode all
    "video_fast": ["detector=video_fast"],  # native views only, detector on every 3rd frame
    "fast": ["detectors.face.params.model=retinaface", "detectors.face.params.scales=[1.0]"],  # the morning's row
}


def trim(src: Path, dst: Path, seconds: float) -> None:
    """Copy packets of the first `seconds` (cut at the next video keyframe after it)."""
    with av.open(str(src)) as ic, av.open(str(dst), "w", format=ic.format.name.split(",")[0]) as oc:
        mapping = {s.index: oc.add_stream_from_template(s) for s in ic.streams if s.type in ("video", "audio")}
        v = ic.streams.video[0]
        for p in ic.demux(list(ic.streams)):
            if p.stream.index not in mapping or p.dts is None:
                continue
            t = float(p.pts * p.time_base) if p.pts is not None else 0.0
            if p.stream is v and p.is_keyframe and t >= seconds:
                break
            if p.stream is not v and t >= seconds:
                continue
            p.stream = mapping[p.stream.index]
            oc.mux(p)


def check_container(src: str, out: str) -> dict:
    fi, ti, ri = read_video(src, display=False)
    fo, to, ro = read_video(out, display=False)
    fps = (len(ti) - 1) / (ti[-1] - ti[0]) if len(ti) > 1 else 25
    a_in, a_out = packet_bytes(src), packet_bytes(out)
    return {
        "frames_in": len(fi), "frames_out": len(fo),
        "max_ts_err_s": max((abs(a - b) for a, b in zip(ti, to)), default=None),
        "duration_in": duration_s(src), "duration_out": duration_s(out),
        "duration_ok": abs(duration_s(src) - duration_s(out)) <= 1 / fps + 1e-6,
        "rotation_in": ri, "rotation_out": ro,
        "audio_packets": len(a_in), "audio_bit_exact": a_in == a_out,
        "ok": len(fi) == len(fo) and ri == ro and a_in == a_out and abs(duration_s(src) - duration_s(out)) <= 1 / fps,
    }


def unmasked_quality(src: str, out: str, boxes: dict[int, np.ndarray], grow: float = 1.5) -> dict:
    """PSNR / SSIM of the output against the input outside every masked box (grown by `grow` about its centre,
    beyond the mask's own growth): what the encoder did to the picture nobody asked to change. Frames that are
    bit-identical (copied GOPs) are counted apart; PSNR/SSIM are means over the other frames."""
    from skimage.metrics import structural_similarity

    fi, _, _ = read_video(src, display=False)
    fo, _, _ = read_video(out, display=False)
    psnr, ssim, identical = [], [], 0
    for i, (a, b) in enumerate(zip(fi, fo)):
        b = b[: a.shape[0], : a.shape[1]]
        if np.array_equal(a, b):
            identical += 1
            continue
        keep = np.ones(a.shape[:2], bool)
        for x0, y0, x1, y1 in boxes.get(i, np.zeros((0, 4))):
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * grow / 2, (y1 - y0) * grow / 2
            keep[max(0, int(cy - hh)):max(0, int(cy + hh) + 1), max(0, int(cx - hw)):max(0, int(cx + hw) + 1)] = False
        if not keep.any():
            continue
        d = (a.astype(np.float64) - b.astype(np.float64))[keep]
        mse = float((d ** 2).mean())
        psnr.append(99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse))
        ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
        _, smap = structural_similarity(ga, gb, data_range=255, full=True)
        ssim.append(float(smap[keep].mean()))
    return {"frames": len(fi), "frames_identical": identical,
            "psnr_db_unmasked": round(float(np.mean(psnr)), 2) if psnr else None,
            "ssim_unmasked": round(float(np.mean(ssim)), 4) if ssim else None}


def run_anon(an: Anonymizer, src: Path, out: Path) -> tuple[float, AuditRecord]:
    fmt = src.suffix.lstrip(".").lower()
    rec = AuditRecord()
    t0 = time.perf_counter()
    anonymize_video(an, str(src), str(out), MediaType("video", "mp4" if fmt == "m4v" else fmt), rec)
    return time.perf_counter() - t0, rec


def run_deface(src: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "deface"), "--keep-audio", "-o", str(out), str(src)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def rss_child(path: str, fmt: str) -> None:
    """Run in a subprocess: the whole pipeline, default face detector included; print peak RSS in MiB."""
    an = Anonymizer(load_config(["policy=faces"]))
    anonymize_video(an, path, path + ".out." + fmt, MediaType("video", fmt), AuditRecord())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/video/clips"))
    ap.add_argument("--trim-s", type=float, default=15.0, help="trim clips longer than this (bounded runs)")
    ap.add_argument("--gen-s", type=float, default=1.5, help="length of the generated 720p/1080p clips")
    ap.add_argument("--configs", default="default,video_fast")
    ap.add_argument("--max-clips", type=int, default=100)
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--rss-short-s", type=float, default=10.0)
    ap.add_argument("--rss-long-s", type=float, default=120.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS comparison (short vs long clip)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS comparison")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return

    work = Path(tempfile.mkdtemp(prefix="anon-vbench-"))
    clips: list[Path] = []
    for p in [] if args.rss_only else sorted(Path(args.data).glob("*"))[: args.max_clips]:
        if p.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm"):
            continue
        with av.open(str(p)) as c:
            long = (c.duration or 0) / 1e6 > args.trim_s
        if long:
            q = work / f"{p.stem}_first{int(args.trim_s)}s{p.suffix}"
            trim(p, q, args.trim_s)
            clips.append(q)
        else:
            clips.append(p)
    for w, h in () if args.rss_only else ((1280, 720), (1920, 1080)):
        q = work / f"gen_{h}p.mp4"
        make_clip(str(q), "mp4", n_frames=int(args.gen_s * 24), size=(w, h), face=h // 4)
        clips.append(q)

    anonymizers = {name: Anonymizer(load_config(["policy=faces", *CONFIGS[name]])) for name in args.configs.split(",")}
    masked_boxes: dict[int, np.ndarray] = {}

    def record_boxes(frame, out, dets, ctx, index):  # mask hook: which boxes were masked in which frame
        if ctx is not None and ctx.kind == "video":
            masked_boxes[index] = dets.xyxy.copy()

    for an in anonymizers.values():
        an.mask_hooks.append(record_boxes)
        an.detect([np.zeros((360, 640, 3), np.uint8)])  # models load on first use: not part of a clip's time
    load_before = os.getloadavg()
    rows = []
    for clip in clips:
        row: dict = {"clip": clip.name}
        with av.open(str(clip)) as c:
            v = c.streams.video[0]
            row["size"] = f"{v.codec_context.width}x{v.codec_context.height}"
        for name, an in anonymizers.items():
            out = work / f"{clip.stem}.{name}{clip.suffix}"
            masked_boxes.clear()
            secs, rec = run_anon(an, clip, out)
            row[f"anon_{name}_fps"] = round(rec.frames / secs, 2)
            row["frames"] = rec.frames
            row[f"anon_{name}_stage_ms"] = {k: round(v) for k, v in rec.timings_ms.items()}
            row[f"anon_{name}_gop_copy"] = rec.extra["encoder"].get("gop_copy") or rec.extra["video"].get("gop_copy")
            row[f"anon_{name}_adaptive"] = rec.extra["video"].get("adaptive")
            row[f"anon_{name}_frames_masked"] = len([b for b in masked_boxes.values() if len(b)])
            if name == next(iter(anonymizers)):
                row["container"] = check_container(str(clip), str(out))
                row["quality"] = unmasked_quality(str(clip), str(out), dict(masked_boxes))
        if not args.no_deface:
            dout = work / f"{clip.stem}.deface{clip.suffix}"
            try:
                row["deface_fps"] = round(row["frames"] / run_deface(clip, dout), 2)
            except subprocess.CalledProcessError as exc:
                row["deface_error"] = str(exc)
        if "deface_fps" in row:
            for name in anonymizers:
                row[f"anon_{name}_vs_deface"] = round(row[f"anon_{name}_fps"] / row["deface_fps"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)

    os.makedirs(args.out, exist_ok=True)
    name = Path(args.out) / f"video_fps_{time.strftime('%Y%m%dT%H%M%S')}.json"
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "args": vars(args), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), "clips": rows}
    name.write_text(json.dumps(result, indent=1))  # written now too, in case the RSS part is cut short

    if args.no_rss:
        print(f"wrote {name}")
        return
    # peak RSS vs. length: decode -> detect -> schedule -> mask -> encode, default settings
    rss = {}
    for secs in (args.rss_short_s, args.rss_long_s):
        q = work / f"rss_{int(secs)}s.mp4"
        make_clip(str(q), "mp4", n_frames=int(secs * 24), size=(640, 360), face=90)
        res = subprocess.run([sys.executable, __file__, "--rss-child", str(q), "mp4"], check=True,
                             capture_output=True, text=True)
        rss[f"{int(secs)}s"] = round(float(res.stdout.strip().splitlines()[-1]), 1)
    print(json.dumps({"peak_rss_mib": rss}), flush=True)

    result["peak_rss_mib"] = rss
    name.write_text(json.dumps(result, indent=1))
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
