"""Validation results: detection metrics, leak rates and calibration from what the harness collected."""

from __future__ import annotations

import csv
from pathlib import Path

from anon_core.evaluation.datasets import Dataset
from anon_core.evaluation.harness import Collected, ValidationPipeline
from anon_core.evaluation.leak import band_rates
from anon_core.evaluation.metrics import evaluate, threshold_for_target_fpr


def _video_summary(per_seq: dict[str, dict], key: str) -> dict:
    parts = [v[key] for v in per_seq.values()]
    n_eval = sum(p["n_evaluated"] for p in parts)
    n_leak = sum(p["n_leaked"] for p in parts)
    n_frames = sum(p["n_frames"] for p in parts)
    fl = sum(p["frames_with_leak"] for p in parts)
    bands: dict = {}
    for p in parts:
        for b, v in p.get("by_size", {}).items():
            acc = bands.setdefault(b, {"n_evaluated": 0, "n_leaked": 0})
            acc["n_evaluated"] += v["n_evaluated"]
            acc["n_leaked"] += v["n_leaked"]
    return {"n_frames": n_frames, "n_evaluated": n_eval, "n_leaked": n_leak,
            "leak_rate": n_leak / n_eval if n_eval else None, "by_size": band_rates(bands),
            "frame_leak_rate": fl / n_frames if n_frames else None,
            "max_longest_leak_run": max((p["max_longest_leak_run"] for p in parts), default=0)}


def compute_metrics(ds: Dataset, pipe: ValidationPipeline, col: Collected, iou: float, match_fn: str,
                    target_fpr: float | None) -> dict:
    targets = tuple(sorted({0.01, 0.05, 0.1} | ({target_fpr} if target_fpr is not None else set())))
    detection, calibration = {}, {}
    for c in ds.classes:
        res = evaluate(col.pairs, iou=iou, score_threshold=pipe.operating[c], classes=[c], match_fn=match_fn,
                       target_fprs=targets)
        res.pop("per_class", None)  # one class per call: the top level is that class
        res["operating_threshold"] = pipe.operating[c]
        detection[c] = res
        if target_fpr is not None:
            pick = threshold_for_target_fpr(res, target_fpr)
            if pick is not None:
                pick = {**pick, **_at_threshold(col, c, pick["threshold"], iou, match_fn)}
                # the curve stops at the floor: a pick at its lowest point may be capped by the floor
                pick["at_floor"] = bool(pick["threshold"] <= min(t for t in res["pr_curve"]["threshold"]))
            calibration[c] = {"target_fpr": target_fpr, "detector": pipe.detector_keys[c], **(pick or {})}
            if pick is None:
                calibration[c]["threshold"] = None
    leak = {}
    for c, acc in col.leak_by_class.items():
        n_e, n_l = acc.get("n_evaluated", 0), acc.get("n_leaked", 0)
        leak[c] = {"n_evaluated": n_e, "n_leaked": n_l, "leak_rate": n_l / n_e if n_e else None,
                   "by_size": band_rates(acc.get("by_size", {}))}
    out = {
        "dataset": {"path": str(ds.root), "kind": ds.kind, "classes": ds.classes, "n_images": ds.n_images,
                    "n_sequences": len(ds.sequences)},
        "pipeline": pipeline_params(pipe),
        "iou": iou,
        "match_fn": match_fn,
        "detection": detection,
        "leak": leak,
        "over_masking": col.over[0] / col.over[1] if col.over[1] else None,
        "seconds_per_image": col.seconds_detect / max(ds.n_images, 1),
        "worst_misses": [{k: v for k, v in it.items() if k != "crop"} for it in col.gallery.items()],
        "n_missed_boxes_10px_plus": col.gallery.n,
    }
    if target_fpr is not None:
        out["calibration"] = calibration
    if col.controls is not None:
        out["controls"] = {c: ctl.result() for c, ctl in col.controls.items()}
    if col.video:
        out["video"] = {
            "tracked": _video_summary(col.video, "tracked"),
            "per_frame_masking": _video_summary(col.video, "per_frame"),
            "sequences": col.video,
            "note": "tracked = frames as the frame engine (anon_core/video/session.py) publishes them, the loop "
                    "anon anonymize runs on a video (tracking, candidates, weak tracks, detect_every_k, residual "
                    "check); per_frame_masking = each analysed frame masked on its own confident detections only",
        }
    return out


def _at_threshold(col: Collected, c: str, thr: float, iou: float, match_fn: str) -> dict:
    res = evaluate(col.pairs, iou=iou, score_threshold=thr, classes=[c], match_fn=match_fn, sweep=(),
                   target_fprs=(), include_curve=False)
    a = res["at_threshold"]
    return {"tp": a["tp"], "fp": a["fp"], "fn": a["fn"], "f1": a["f1"],
            "recall_by_size": {k: v["recall"] for k, v in res["recall_by_size"].items()}}



def pipeline_params(pipe: ValidationPipeline) -> dict:
    models = {}
    for key, det in pipe.anonymizer.detectors.items():
        info = det.info()
        models[key] = {"name": info.name, "version": info.version, "weights_sha256": info.weights_sha256,
                       "params": {k: v for k, v in pipe.config.detectors[key].params.items()}}
    return {"policy": pipe.config.policy, "classes": list(pipe.config.classes), "config_hash": pipe.deploy_hash,
            "validated_config_hash": pipe.config.hash(),
            "operating_thresholds": dict(pipe.operating), "score_floor": pipe.floor, "models": models,
            "masks": {c: vars(pipe.config.masks[c]) for c in pipe.config.classes if c in pipe.config.masks}}



def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
