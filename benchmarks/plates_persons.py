"""Plates and persons on the shared annotated data: AP50, recall/precision, leak rate with the policy masks, speed.

    python benchmarks/plates_persons.py --which plates,persons
    python benchmarks/plates_persons.py --which persons --limit 50 --threads 1

Speed: wall and process CPU milliseconds per image (CPU time is the steadier number on a shared machine; with
--threads 1 it is close to what one core would take).

Detections are computed once at a low threshold and scored at several; the leak rate applies the default
configuration's mask for the class (plates: solid box; persons: blurred silhouette, and a box for comparison)
at the detector's operating threshold and measures on pixels (anon_core.evaluation.leak_image).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anon_core.config import AnonConfig
from anon_core.detectors import create_detector
from anon_core.evaluation import evaluate, leak_image, load_jsonl
from anon_core.masking import Masker
from anon_core.masking.apply import MaskSpec

SETS = {
    "plates": dict(data="../shared/data/plates", cls="plate"),
    "persons": dict(data="../shared/data/persons", cls="person"),
}


def run(which: str, data: str, limit: int, threads: int, thresholds: list[float],
        overrides: dict | None = None) -> dict:
    cls = SETS[which]["cls"]
    cfg = AnonConfig()
    spec = next(s for s in cfg.detectors.values() if s.name == {"plate": "plate", "person": "nanodet_person"}[cls])
    params = dict(spec.params, threads=threads, device="cpu", **(overrides or {}))
    op_threshold = float(params.get("threshold", 0.5))
    params["threshold"] = 0.05  # keep low-score detections so AP sees the whole precision/recall curve
    det = create_detector(spec.name, **params)
    gts = load_jsonl(data)
    if limit:
        gts = gts[:: max(1, len(gts) // limit)][:limit]
    det.detect([np.zeros((64, 64, 3), np.uint8)])  # model loading is not per-image cost
    dets, wall, cpu = [], 0.0, 0.0
    for g in gts:
        img = np.asarray(Image.open(g.path).convert("RGB"))
        # process CPU time next to wall time: on a shared, loaded machine wall time mostly measures the neighbours
        t0, c0 = time.perf_counter(), time.process_time()
        dets += det.detect([img])
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    rows: dict = {"n_images": len(gts), "ms_per_image": round(wall / len(gts) * 1000, 1),
                  "cpu_ms_per_image": round(cpu / len(gts) * 1000, 1), "threads": threads,
                  "operating_threshold": op_threshold}
    pairs = list(zip(gts, dets))
    for t in sorted(set(thresholds) | {op_threshold}):
        m = evaluate(pairs, iou=0.5, score_threshold=t, include_curve=False)
        rows[f"@{t}"] = {"ap50": round(m["ap"], 4), "recall": round(m["at_threshold"]["recall"], 4),
                         "precision": round(m["at_threshold"]["precision"], 4),
                         "fp_per_image": round(m["at_threshold"]["fp_per_image"], 3),
                         "recall_by_size": {k: round(v["recall"] or 0, 3) for k, v in m["recall_by_size"].items()}}
    maskers = {"policy": Masker({cls: cfg.masks[cls]})}
    if cls == "person":
        box = cfg.masks[cls]
        maskers["box"] = Masker({cls: MaskSpec(box.operator, "box", box.scale, dict(box.params))})
    for name, masker in maskers.items():
        n_eval = n_leak = 0
        for g, d in pairs:
            img = np.asarray(Image.open(g.path).convert("RGB"))
            out, _ = masker.apply(img, d[d.scores >= op_threshold])
            r = leak_image(img, out, g)
            n_eval += r.n_evaluated
            n_leak += r.n_leaked
        rows[f"leak_rate_{name}_mask"] = round(n_leak / max(n_eval, 1), 4)
        rows[f"leak_evaluated_{name}_mask"] = n_eval
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="plates,persons")
    ap.add_argument("--plates", default=SETS["plates"]["data"])
    ap.add_argument("--persons", default=SETS["persons"]["data"])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--thresholds", default="0.3,0.4,0.45,0.5,0.6")
    ap.add_argument("--param", action="append", default=[], help="detector parameter override, key=JSON value")
    ap.add_argument("--out", default="benchmarks/results/plates_persons.json")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    report = {}
    for which in args.which.split(","):
        report[which] = run(which, getattr(args, which), args.limit, args.threads,
                            [float(t) for t in args.thresholds.split(",")], overrides)
        report[which]["overrides"] = overrides
        print(which, json.dumps(report[which]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
