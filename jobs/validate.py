"""`anon validate`: run the configured pipeline on annotated data, measure it, log it to MLflow.

    anon validate --data DIR -o OUTDIR [--set k=v ...] [--classes face] [--target-fpr 0.05]
                  [--write-config PATH] [--limit N] [--iou 0.5] [--tracking-uri URI] [--no-mlflow]
    python jobs/validate.py --data DIR -o OUTDIR ...          (same arguments)

Dataset kinds (found from DIR):
- box set: `DIR/annotations.jsonl` (the shared JSONL format); the class is `--classes` or the folder name
  (faces -> face, plates -> plate, persons -> person).
- COCO: a COCO instances JSON in DIR (or `--data file.json`); images next to it or in `images/`.
- video: MOTChallenge sequences `DIR/<seq>/{img1,gt/gt.txt,seqinfo.ini}` (face_video, tracking). Frames go through
  detection and the video pipeline's tracker/mask scheduler in order, as a decoded video would.

How it measures: every detector runs once at a low score floor (`--score-floor`, default 0.1) so the PR curve
extends below the operating point; masking uses only the detections at or above each detector's configured
threshold (what `anon anonymize` would mask). Detection metrics come from `anon_core.evaluation.metrics`, pixel
leak rate / over-masking from `anon_core.evaluation.leak` (original vs anonymized inside every GT box).

Outputs in OUTDIR: predictions.jsonl (one line per image: file, boxes, scores, labels -- everything above the
floor, so anyone can re-score at any threshold), metrics.json, per_image.csv, pr_curve.png (when matplotlib is
installed), worst_misses.png, and the MLflow run (default tracking URI sqlite:///OUTDIR/mlflow.db; MLFLOW_TRACKING_URI
or --tracking-uri win). The last stdout line is a one-line JSON summary.

Calibration: `--target-fpr 0.05` picks, per class, the lowest threshold whose false positive rate
(false detections / all non-ignored detections, see metrics.py) is <= the target, and reports recall there.
`--write-config PATH` writes those thresholds as a Hydra config:
- drop it into `conf/calibration/<name>.yaml` and run `anon anonymize IN -o OUT --set +calibration=<name>`, or
- pass the `--set` lines from its header comment (e.g. `--set detectors.face.params.threshold=0.43`), or
- `load_config(config_overrides(PATH))` in Python.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import copy
import csv
import heapq
import inspect
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if __package__ in (None, ""):  # `python jobs/validate.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from anon_core.detections import Detections
    from anon_core.evaluation import GroundTruthImage

# The evaluation library pulls in scikit-image (~2 s): imported inside the functions, so that building the `anon`
# argument parser (which adds this subcommand's arguments) stays fast for every other subcommand.

log = logging.getLogger("anon.validate")

# Folder names of the shared data -> class name (the pipeline's labels).
FOLDER_CLASSES = {"faces": "face", "face_video": "face", "plates": "plate", "persons": "person",
                  "tracking": "person", "pedestrians": "person", "texts": "text"}
DEFAULT_FLOOR = 0.2  # lower costs a lot on crowds: RetinaFace multi-view fusion is O(n^2) in candidates (0.05: >23 GB)
GALLERY_SIZE = 24


# ----------------------------------------------------------------------------------------------- dataset discovery


@dataclass
class VideoSequence:
    name: str
    fps: float
    frames: list[tuple[int, GroundTruthImage]]  # (frame number, gt) in frame order


@dataclass
class Dataset:
    kind: str  # "boxes" | "coco" | "video"
    root: Path
    classes: list[str]
    images: list[GroundTruthImage] = field(default_factory=list)
    sequences: list[VideoSequence] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.images) + sum(len(s.frames) for s in self.sequences)


def _class_from_name(path: Path) -> str | None:
    name = path.name.lower()
    if name in FOLDER_CLASSES:
        return FOLDER_CLASSES[name]
    return name[:-1] if name.endswith("s") and name[:-1] in FOLDER_CLASSES.values() else None


def _is_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return head.lstrip().startswith("{") and ('"images"' in head or '"annotations"' in head)


def _mot_sequences(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.glob("*/gt/gt.txt") if (p.parent.parent / "img1").is_dir())


def discover(data: str | Path, classes: list[str] | None = None, limit: int | None = None) -> Dataset:
    """Find the dataset kind and load its ground truth (see the module docstring)."""
    from anon_core.evaluation import load_coco, load_jsonl, load_mot

    root = Path(data).resolve()
    if not root.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    folder = root if root.is_dir() else root.parent
    guessed = _class_from_name(folder)
    wanted = list(classes) if classes else ([guessed] if guessed else None)

    seqs = _mot_sequences(root) if root.is_dir() else []
    if seqs:
        label = (wanted or ["person"])[0]
        # MOT17 distractor classes only make sense for pedestrians; face_video has class 1 = face only
        ignore = (2, 7, 8, 12) if label == "person" else ()
        out = []
        for seq in seqs:
            gt = load_mot(seq / "gt" / "gt.txt", classes=(1,), ignore_classes=ignore, label=label)
            ini = configparser.ConfigParser()
            ini.read(seq / "seqinfo.ini")
            fps = float(ini.get("Sequence", "frameRate", fallback="25"))
            frames = sorted(gt.items())[:limit] if limit else sorted(gt.items())
            for _, g in frames:
                g.file = f"{seq.name}/{Path(g.path or g.file).parent.name}/{g.file}"
            out.append(VideoSequence(seq.name, fps, frames))
        return Dataset("video", root, [label], sequences=out)

    jsonl = root / "annotations.jsonl" if root.is_dir() else root if root.suffix == ".jsonl" else None
    if jsonl is not None and jsonl.exists():
        label = (wanted or [None])[0]
        if label is None:
            raise ValueError(f"cannot tell the class of {root} from its name: pass --classes")
        images = load_jsonl(jsonl, label=label)
        return Dataset("boxes", root, [label], images=images[:limit] if limit else images)

    candidates = [root] if root.is_file() else sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    coco = next((p for p in candidates if p.suffix == ".json" and _is_coco(p)), None)
    if coco is not None:
        base = coco.parent.parent if coco.parent.name == "annotations" else coco.parent
        img_dir = base / "images" if (base / "images").is_dir() else base
        names = wanted or ["person"]
        images = load_coco(coco, img_dir, category_names=names)
        return Dataset("coco", root, names, images=images[:limit] if limit else images)
    raise ValueError(f"{root}: no annotations.jsonl, COCO JSON or MOT sequences (<seq>/gt/gt.txt) found")


# ----------------------------------------------------------------------------------------------- the pipeline


@dataclass
class Pipeline:
    """The configured Anonymizer with detectors opened down to the score floor, plus the operating points."""

    anonymizer: object
    config: object  # the configuration as the user gave it (its hash is what `anon anonymize` would record)
    operating: dict[str, float]  # class -> configured threshold
    detector_keys: dict[str, str]  # class -> key under `detectors.` in the config
    floor: float
    deploy_hash: str = ""  # hash of the configuration before validate narrowed its classes (= the audit's hash)

    def detect(self, frames: list[np.ndarray]) -> list[tuple[Detections, Detections]]:
        """(everything above the floor, what the configured pipeline masks) per frame."""
        out = []
        for d in self.anonymizer.detect(frames):
            thr = np.array([self.operating.get(str(lb), math.inf) for lb in d.labels], np.float32)
            out.append((d, d[d.scores >= thr] if len(d) else d))
        return out


def _default_threshold(det) -> float:
    p = inspect.signature(type(det).__init__).parameters.get("threshold")
    return float(p.default) if p is not None and p.default is not inspect.Parameter.empty else 0.5


def build_pipeline(sets: list[str], classes: list[str], floor: float) -> Pipeline:
    from anon_core.pipeline import Anonymizer
    from jobs.config import load_config

    config = load_config(sets)
    deploy_hash = config.hash()
    if not config.classes:
        # validate what the data labels; other classes' masks would only blur the over-masking number
        config.classes = list(classes)
    run_cfg = copy.deepcopy(config)
    operating: dict[str, float] = {}
    ops = {k: spec.params.get("threshold") for k, spec in run_cfg.detectors.items()}
    for spec in run_cfg.detectors.values():
        op = spec.params.get("threshold")
        spec.params["threshold"] = min(float(op), floor) if op is not None else floor
    anonymizer = Anonymizer(run_cfg)
    # Detectors that decode candidates at their own lower score (multi-view fusion, NanoDet) must open that too,
    # or nothing below their configured candidate level reaches the curve. Only those that take the parameter.
    opened = [k for k, d in anonymizer.detectors.items() if hasattr(d, "candidate_threshold")]
    for k in opened:
        spec = run_cfg.detectors[k]
        cand = spec.params.get("candidate_threshold", ops[k])
        spec.params["candidate_threshold"] = min(float(cand), floor) if cand is not None else floor
    if opened:
        anonymizer = Anonymizer(run_cfg)
    keys: dict[str, str] = {}
    for key, det in anonymizer.detectors.items():
        op = ops.get(key)
        op = float(op) if op is not None else _default_threshold(det)
        for c in det.classes:
            if c in config.classes and c not in operating:
                operating[c], keys[c] = op, key
    missing = [c for c in classes if c not in operating]
    if missing:
        raise ValueError(f"no configured detector covers {missing}; configured: {sorted(config.detectors)}")
    return Pipeline(anonymizer, config, operating, keys, floor, deploy_hash)


# ----------------------------------------------------------------------------------------------- running


def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    # GT is in stored-pixel coordinates, so EXIF orientation is deliberately not applied here
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _pred_row(gt: GroundTruthImage, det: Detections, extra: dict | None = None) -> dict:
    row = {"file": gt.file, "width": gt.width, "height": gt.height,
           "boxes": [[round(float(v), 2) for v in b] for b in det.xyxy],
           "scores": [round(float(s), 5) for s in det.scores], "labels": [str(x) for x in det.labels]}
    row.update(extra or {})
    return row


class MissGallery:
    """Keeps crops of the largest missed GT boxes (a missed big face is the worst miss), bounded in memory."""

    def __init__(self, size: int = GALLERY_SIZE, side: int = 96):
        self.size, self.side = size, side
        self.heap: list[tuple[float, int, dict]] = []
        self.n = 0

    def add(self, img: np.ndarray, gt: GroundTruthImage, missed: np.ndarray, best: np.ndarray, leaked: np.ndarray):
        import cv2

        for i in np.flatnonzero(missed):
            x1, y1, x2, y2 = gt.boxes[i]
            side = float(min(x2 - x1, y2 - y1))
            if side < 10:
                continue
            self.n += 1
            if len(self.heap) == self.size and side <= self.heap[0][0]:
                continue
            xi1, yi1 = max(int(x1), 0), max(int(y1), 0)
            xi2, yi2 = min(int(math.ceil(x2)), img.shape[1]), min(int(math.ceil(y2)), img.shape[0])
            crop = img[yi1:yi2, xi1:xi2]
            if crop.size == 0:
                continue
            f = self.side / max(crop.shape[:2])
            crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))))
            item = {"crop": crop, "file": gt.file, "box": [float(v) for v in gt.boxes[i]], "min_side": side,
                    "best_score": None if not np.isfinite(best[i]) else float(best[i]), "leaked": bool(leaked[i])}
            entry = (side, self.n, item)
            if len(self.heap) < self.size:
                heapq.heappush(self.heap, entry)
            else:
                heapq.heapreplace(self.heap, entry)

    def items(self) -> list[dict]:
        return [e[2] for e in sorted(self.heap, key=lambda e: -e[0])]

    def save(self, path: Path) -> bool:
        from PIL import Image, ImageDraw

        items = self.items()
        if not items:
            return False
        cols = min(6, len(items))
        rows = -(-len(items) // cols)
        cell_w, cell_h = self.side + 8, self.side + 30
        sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, it in enumerate(items):
            x, y = (k % cols) * cell_w + 4, (k // cols) * cell_h + 4
            sheet.paste(Image.fromarray(np.ascontiguousarray(it["crop"])), (x, y))
            score = "none" if it["best_score"] is None else f"{it['best_score']:.2f}"
            draw.text((x, y + self.side + 1), f"{it['min_side']:.0f}px s={score}", fill=(0, 0, 0))
            draw.text((x, y + self.side + 13), "LEAKED" if it["leaked"] else "masked anyway",
                      fill=(200, 0, 0) if it["leaked"] else (0, 120, 0))
        sheet.save(path)
        return True


@dataclass
class Collected:
    pairs: list[tuple[GroundTruthImage, Detections]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per-image CSV rows
    leak_by_class: dict[str, dict] = field(default_factory=dict)
    over: list[int] = field(default_factory=lambda: [0, 0])  # changed outside, pixels outside
    video: dict[str, dict] = field(default_factory=dict)
    gallery: MissGallery = field(default_factory=MissGallery)
    seconds_detect: float = 0.0


def _leak_acc(acc: dict, gt: GroundTruthImage, res) -> None:
    from anon_core.evaluation.metrics import SIZE_BUCKETS

    wh = gt.boxes[:, 2:] - gt.boxes[:, :2]
    side = wh.min(axis=1) if len(wh) else np.zeros(0)
    acc["n_evaluated"] = acc.get("n_evaluated", 0) + res.n_evaluated
    acc["n_leaked"] = acc.get("n_leaked", 0) + res.n_leaked
    by = acc.setdefault("by_size", {})
    for lo, hi in SIZE_BUCKETS[1:]:  # boxes < 10 px are skipped by leak_image
        m = (side >= lo) & (side < hi) & res.evaluated
        name = f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"
        b = by.setdefault(name, {"n_evaluated": 0, "n_leaked": 0})
        b["n_evaluated"] += int(m.sum())
        b["n_leaked"] += int((m & res.leaked).sum())


def _score_frame(
    col: Collected, pipe: Pipeline, img: np.ndarray, anon: np.ndarray, gt: GroundTruthImage, det: Detections,
    op: Detections, iou: float, match_fn: str, seconds: float, extra: dict | None = None,
) -> None:
    """Per-image accounting shared by stills and video frames: CSV row, leak per class, gallery."""
    from anon_core.evaluation import GroundTruthImage, leak_image
    from anon_core.evaluation.matching import match_image

    row = {"file": gt.file, **(extra or {}), "n_gt": len(gt.boxes), "n_ignore": len(gt.ignore), "n_det": len(det),
           "n_masked": len(op), "tp": 0, "fp": 0, "fn": 0, "leak_evaluated": 0, "leaked": 0,
           "seconds": round(seconds, 3)}
    for c in sorted(set(pipe.operating)):
        g = gt.for_class(c)
        d = det[det.labels == c] if len(det) else det
        m = match_image(g.boxes, d.xyxy, d.scores, g.ignore, iou, match_fn)
        at_op = d.scores >= pipe.operating[c]
        row["tp"] += int((m.tp & at_op).sum())
        row["fp"] += int((m.fp & at_op).sum())
        found = m.gt_score >= pipe.operating[c]
        row["fn"] += int((~found).sum())
        res = leak_image(img, anon, g)
        _leak_acc(col.leak_by_class.setdefault(c, {}), g, res)
        row["leak_evaluated"] += res.n_evaluated
        row["leaked"] += res.n_leaked
        col.gallery.add(img, g, ~found, m.gt_score, res.leaked)
    # over-masking against every labelled region of the image (all classes + ignore)
    share_res = leak_image(img, anon, GroundTruthImage(gt.file, gt.width, gt.height, np.zeros((0, 4)),
                                                       np.concatenate([gt.boxes, gt.ignore])))
    col.over[0] += share_res.changed_outside
    col.over[1] += share_res.pixels_outside
    row["over_masking"] = None if share_res.over_masking is None else round(share_res.over_masking, 6)
    col.rows.append(row)


def run_images(ds: Dataset, pipe: Pipeline, out: Path, iou: float, match_fn: str, progress: bool) -> Collected:
    col = Collected()
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for k, gt in enumerate(ds.images):
            img = _load_rgb(gt.path or gt.file)
            t0 = time.perf_counter()
            det, op = pipe.detect([img])[0]
            anon, _ = pipe.anonymizer.mask(img, op)
            dt = time.perf_counter() - t0
            col.seconds_detect += dt
            fh.write(json.dumps(_pred_row(gt, det)) + "\n")
            col.pairs.append((gt, det))
            _score_frame(col, pipe, img, anon, gt, det, op, iou, match_fn, dt)
            if progress and (k + 1) % 10 == 0:
                print(f"[validate] {k + 1}/{len(ds.images)} images", file=sys.stderr, flush=True)
    return col


def _scheduler(pipe: Pipeline, fps: float, width: int, height: int):
    from anon_core.tracking import MaskScheduler

    v = pipe.config.video
    # the same construction as the video pipeline (anon_core/video/anonymize.py) with detection on every frame
    return MaskScheduler.from_seconds(fps, v.lookahead_s, v.lead_s, v.trail_s, max(v.max_gap_s, 2 / fps),
                                      frame_size=(width, height), mask_thresh=v.mask_thresh)


def run_video(ds: Dataset, pipe: Pipeline, out: Path, iou: float, match_fn: str, progress: bool) -> Collected:
    """Frames in order -> detect (batches) -> MaskScheduler (tracking, gap fill) -> mask -> leak per frame."""
    from anon_core.evaluation import leak_video

    col = Collected()
    batch = max(1, int(pipe.config.video.batch_size))
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for seq in ds.sequences:
            if not seq.frames:
                continue
            gt0 = seq.frames[0][1]
            w, h = gt0.width, gt0.height
            if not (w and h):
                h, w = _load_rgb(gt0.path).shape[:2]
            sched = _scheduler(pipe, seq.fps, w, h)
            held: dict[int, tuple[np.ndarray, GroundTruthImage, Detections, Detections, float]] = {}
            untracked: list[tuple[int, np.ndarray, np.ndarray, GroundTruthImage]] = []
            tracked: list[tuple[int, np.ndarray, np.ndarray, GroundTruthImage]] = []

            def release(final: list[tuple[int, Detections]], held=held, tracked=tracked, seq=seq) -> None:
                for idx, boxes in final:
                    img, gt, det, op, dt = held.pop(idx)
                    anon, _ = pipe.anonymizer.mask(img, boxes) if len(boxes) else (img, 0)
                    frame = int(gt.extra.get("frame", idx))
                    tracked.append((frame, img, anon, gt))
                    _score_frame(col, pipe, img, anon, gt, det, boxes, iou, match_fn, dt,
                                 {"sequence": seq.name, "frame": frame})

            for start in range(0, len(seq.frames), batch):
                chunk = seq.frames[start:start + batch]
                imgs = [_load_rgb(g.path) for _, g in chunk]
                t0 = time.perf_counter()
                results = pipe.detect(imgs)
                dt = (time.perf_counter() - t0) / len(chunk)
                col.seconds_detect += dt * len(chunk)
                for j, ((frame, gt), img, (det, op)) in enumerate(zip(chunk, imgs, results)):
                    idx = start + j
                    held[idx] = (img, gt, det, op, dt)
                    fh.write(json.dumps(_pred_row(gt, det, {"sequence": seq.name, "frame": frame})) + "\n")
                    col.pairs.append((gt, det))
                    # the per-frame baseline: what masking each frame on its own detections would leak
                    plain, _ = pipe.anonymizer.mask(img, op) if len(op) else (img, 0)
                    untracked.append((frame, img, plain, gt))
                    release(sched.push(idx, op))
                if progress:
                    print(f"[validate] {seq.name}: {min(start + batch, len(seq.frames))}/{len(seq.frames)} frames",
                          file=sys.stderr, flush=True)
            release(sched.flush())
            if held:  # fail closed, like the video pipeline
                raise RuntimeError(f"{len(held)} frames of {seq.name} were never scheduled for masking")
            col.video[seq.name] = {
                "tracked": leak_video(tracked),
                "per_frame": leak_video(untracked),
                "scheduler": sched.stats(),
            }
            tracked.clear()
            untracked.clear()
    return col


# ----------------------------------------------------------------------------------------------- metrics


def _video_summary(per_seq: dict[str, dict], key: str) -> dict:
    parts = [v[key] for v in per_seq.values()]
    n_eval = sum(p["n_evaluated"] for p in parts)
    n_leak = sum(p["n_leaked"] for p in parts)
    n_frames = sum(p["n_frames"] for p in parts)
    fl = sum(p["frames_with_leak"] for p in parts)
    return {"n_frames": n_frames, "n_evaluated": n_eval, "n_leaked": n_leak,
            "leak_rate": n_leak / n_eval if n_eval else None,
            "frame_leak_rate": fl / n_frames if n_frames else None,
            "max_longest_leak_run": max((p["max_longest_leak_run"] for p in parts), default=0)}


def compute_metrics(ds: Dataset, pipe: Pipeline, col: Collected, iou: float, match_fn: str,
                    target_fpr: float | None) -> dict:
    from anon_core.evaluation import evaluate, threshold_for_target_fpr

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
                   "by_size": {k: {**v, "leak_rate": v["n_leaked"] / v["n_evaluated"] if v["n_evaluated"] else None}
                               for k, v in acc.get("by_size", {}).items()}}
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
    if col.video:
        out["video"] = {
            "tracked": _video_summary(col.video, "tracked"),
            "per_frame_masking": _video_summary(col.video, "per_frame"),
            "sequences": col.video,
            "note": "tracked = frames masked through anon_core.tracking.MaskScheduler with the configured "
                    "video windows (as anon_core.video does); per_frame_masking = each frame masked on its own "
                    "detections only",
        }
    return out


def _at_threshold(col: Collected, c: str, thr: float, iou: float, match_fn: str) -> dict:
    from anon_core.evaluation import evaluate

    res = evaluate(col.pairs, iou=iou, score_threshold=thr, classes=[c], match_fn=match_fn, sweep=(),
                   target_fprs=(), include_curve=False)
    a = res["at_threshold"]
    return {"tp": a["tp"], "fp": a["fp"], "fn": a["fn"], "f1": a["f1"],
            "recall_by_size": {k: v["recall"] for k, v in res["recall_by_size"].items()}}


# ----------------------------------------------------------------------------------------------- reports


def pipeline_params(pipe: Pipeline) -> dict:
    models = {}
    for key, det in pipe.anonymizer.detectors.items():
        info = det.info()
        models[key] = {"name": info.name, "version": info.version, "weights_sha256": info.weights_sha256,
                       "params": {k: v for k, v in pipe.config.detectors[key].params.items()}}
    return {"policy": pipe.config.policy, "classes": list(pipe.config.classes), "config_hash": pipe.deploy_hash,
            "validated_config_hash": pipe.config.hash(),
            "operating_thresholds": dict(pipe.operating), "score_floor": pipe.floor, "models": models,
            "masks": {c: vars(pipe.config.masks[c]) for c in pipe.config.classes if c in pipe.config.masks}}


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot_pr(metrics: dict, path: Path) -> bool:
    """PR curve + recall/FPR against threshold, one line per class. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no PR curve plot (pip install matplotlib)")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for c, res in metrics["detection"].items():
        cur = res.get("pr_curve") or {}
        if not cur.get("threshold"):
            continue
        r = [np.nan if v is None else v for v in cur["recall"]]
        p = [np.nan if v is None else v for v in cur["precision"]]
        ap = res.get("ap")
        line = ax1.plot(r, p, label=f"{c} AP@{metrics['iou']:g}={ap:.3f}" if ap is not None else c)[0]
        at = res["at_threshold"]
        if at["recall"] is not None and at["precision"] is not None:
            ax1.plot(at["recall"], at["precision"], "o", color=line.get_color())
            ax1.annotate(f"thr {at['threshold']:.2f}", (at["recall"], at["precision"]), fontsize=8)
        cal = (metrics.get("calibration") or {}).get(c) or {}
        if cal.get("threshold") is not None:
            ax1.plot(cal["recall"], cal["precision"], "s", color=line.get_color())
            ax1.annotate(f"FPR<={cal['target_fpr']:g}: {cal['threshold']:.2f}", (cal["recall"], cal["precision"]),
                         fontsize=8)
        t = cur["threshold"]
        ax2.plot(t, r, color=line.get_color(), label=f"{c} recall")
        ax2.plot(t, [np.nan if v is None else v for v in cur["fpr"]], "--", color=line.get_color(),
                 label=f"{c} FPR")
    ax1.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision / recall")
    ax2.set(xlabel="score threshold", ylabel="rate", xlim=(0, 1), ylim=(0, 1.02),
            title="recall and FPR (false / all detections)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(Path(metrics["dataset"]["path"]).name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def calibration_overrides(metrics: dict) -> dict[str, float]:
    """`--set`-style keys for the calibrated thresholds, e.g. {"detectors.face.params.threshold": 0.43}."""
    out = {}
    for cal in (metrics.get("calibration") or {}).values():
        if cal.get("threshold") is not None:
            out[f"detectors.{cal['detector']}.params.threshold"] = round(float(cal["threshold"]), 4)
    return out


def write_config(metrics: dict, path: Path) -> dict[str, float]:
    """Write the calibrated thresholds as a Hydra config (nested, `@package _global_`) with `--set` lines."""
    import yaml

    flat = calibration_overrides(metrics)
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    lines = ["# @package _global_",
             f"# Calibrated by `anon validate` on {metrics['dataset']['path']}",
             f"# config {metrics['pipeline']['config_hash']}, IoU {metrics['iou']:g}"]
    for c, cal in (metrics.get("calibration") or {}).items():
        if cal.get("threshold") is None:
            lines.append(f"# {c}: no threshold reaches FPR <= {cal['target_fpr']:g} (left unchanged)")
        else:
            lines.append(f"# {c}: FPR {cal['fpr']:.4f} <= {cal['target_fpr']:g} at threshold {cal['threshold']:.4f}, "
                         f"recall {cal['recall']:.4f}")
    lines += ["# Use: copy to conf/calibration/<name>.yaml and add `--set +calibration=<name>`, or pass:"]
    lines += [f"#   --set {k}={v}" for k, v in flat.items()]
    body = yaml.safe_dump(nested, sort_keys=True) if nested else "{}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return flat


def config_overrides(path: str | Path) -> list[str]:
    """A config written by --write-config as `--set` items for `jobs.config.load_config`."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}

    def flat(node, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from flat(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            yield f"{prefix}={json.dumps(node)}"

    return list(flat(data, ""))


# ----------------------------------------------------------------------------------------------- MLflow


def _mlflow_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key.replace("<", "lt").replace("+", "plus"))


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    out: dict[str, float] = {}

    def put(key: str, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int | float) and math.isfinite(float(v)):
            out[_mlflow_name(key)] = float(v)

    for c, res in metrics["detection"].items():
        put(f"{c}.ap", res["ap"])
        put(f"{c}.ap_50_95", res["ap_50_95"])
        for k in ("precision", "recall", "f1", "fpr", "fp_per_image", "threshold"):
            put(f"{c}.{k}", res["at_threshold"][k])
        for b, v in res["recall_by_size"].items():
            put(f"{c}.recall_size_{b}", v["recall"])
        put(f"{c}.recall_at_p{res['recall_at_precision']['precision_target']:g}",
            res["recall_at_precision"]["recall"])
    for c, cal in (metrics.get("calibration") or {}).items():
        put(f"{c}.calibrated_threshold", cal.get("threshold"))
        put(f"{c}.calibrated_recall", cal.get("recall"))
        put(f"{c}.calibrated_fpr", cal.get("fpr"))
    for c, lk in metrics["leak"].items():
        put(f"{c}.leak_rate", lk["leak_rate"])
        for b, v in lk["by_size"].items():
            put(f"{c}.leak_rate_size_{b}", v["leak_rate"])
    put("over_masking", metrics["over_masking"])
    put("seconds_per_image", metrics["seconds_per_image"])
    if "video" in metrics:
        for key in ("tracked", "per_frame_masking"):
            v = metrics["video"][key]
            put(f"video.{key}.leak_rate", v["leak_rate"])
            put(f"video.{key}.frame_leak_rate", v["frame_leak_rate"])
            put(f"video.{key}.max_longest_leak_run", v["max_longest_leak_run"])
    for name, r in (metrics.get("reid") or {}).get("rank1", {}).items():
        for band, v in r.items():
            put(f"reid.{name}.rank1_{band}", v)
    return out


def mlflow_params(metrics: dict, args: argparse.Namespace) -> dict[str, str]:
    p = metrics["pipeline"]
    out = {"dataset": metrics["dataset"]["path"], "dataset_kind": metrics["dataset"]["kind"],
           "n_images": metrics["dataset"]["n_images"], "classes": ",".join(metrics["dataset"]["classes"]),
           "policy": p["policy"], "config_hash": p["config_hash"], "git_commit": git_commit(),
           "iou": metrics["iou"], "match_fn": metrics["match_fn"], "score_floor": p["score_floor"],
           "target_fpr": args.target_fpr, "overrides": " ".join(args.set) or "-", "limit": args.limit}
    for c, t in p["operating_thresholds"].items():
        out[f"threshold.{c}"] = t
    for key, m in p["models"].items():
        out[f"model.{key}"] = m["name"]
        out[f"model.{key}.version"] = m["version"]
        out[f"model.{key}.weights_sha256"] = m["weights_sha256"][:16]
        for k, v in m["params"].items():
            out[f"detector.{key}.{k}"] = json.dumps(v) if not isinstance(v, str) else v
    for c, m in p["masks"].items():
        out[f"mask.{c}"] = json.dumps(m, default=str)
    return {_mlflow_name(k): str(v)[:500] for k, v in out.items()}


def tracking_uri(args: argparse.Namespace, out: Path) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def log_mlflow(metrics: dict, args: argparse.Namespace, out: Path, artifacts: list[Path]) -> dict:
    from anon_core.offline import go_offline

    go_offline()  # before MLflow loads: its telemetry switch is read at import
    # MLflow is slow to import and optional for the rest of anon: only this path loads it
    import mlflow

    uri = tracking_uri(args, out)
    # keep MLflow's own chatter off stdout: the summary line must be the last thing there
    with contextlib.redirect_stdout(sys.stderr):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the current directory
                location = Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
            exp_id = client.create_experiment(args.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        name = f"{Path(metrics['dataset']['path']).name}-{'+'.join(metrics['dataset']['classes'])}"
        with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
            mlflow.set_tags({"anon.command": "validate", "anon.dataset_kind": metrics["dataset"]["kind"]})
            mlflow.log_params(mlflow_params(metrics, args))
            mlflow.log_metrics(mlflow_metrics(metrics))
            for c, res in metrics["detection"].items():  # the sweep as a metric history: step = threshold x 100
                for row in res["sweep"]:
                    for k in ("recall", "precision", "fpr"):
                        if row[k] is not None:
                            step = round(row["threshold"] * 100)
                            mlflow.log_metric(_mlflow_name(f"{c}.sweep_{k}"), row[k], step=step)
            for a in artifacts:
                if a.exists():
                    mlflow.log_artifact(str(a))
            return {"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri}


# ----------------------------------------------------------------------------------------------- entry points


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", required=True, help="annotations.jsonl folder/file, COCO JSON, or MOT sequences folder")
    p.add_argument("-o", "--output", required=True, help="folder for predictions.jsonl, metrics.json, plots")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: from the folder name)")
    p.add_argument("--target-fpr", type=float, default=None,
                   help="calibrate: per class, the lowest threshold with FPR (false/all detections) <= this")
    p.add_argument("--write-config", default=None, metavar="PATH", help="write calibrated thresholds as Hydra YAML")
    p.add_argument("--limit", type=int, default=None, help="first N images (video: first N frames per sequence)")
    p.add_argument("--iou", type=float, default=None, help="match IoU (default 0.5; 0.3 for video, loose YTF boxes)")
    p.add_argument("--match", choices=("iou", "centre"), default="iou", help="match rule (centre: det centre in GT)")
    p.add_argument("--score-floor", type=float, default=DEFAULT_FLOOR,
                   help="detectors run down to this score so the PR curve extends below the operating point")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///OUTDIR/mlflow.db)")
    p.add_argument("--experiment", default="anon-validate", help="MLflow experiment name")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    p.add_argument("--reid", action="store_true", help="face re-identification attack (needs the `subjects` extra)")
    return p


def validate(args: argparse.Namespace) -> dict:
    """Run one validation; returns the summary dict (also written to OUTDIR/summary.json)."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    ds = discover(args.data, classes, args.limit)
    iou = args.iou if args.iou is not None else (0.3 if ds.kind == "video" else 0.5)
    pipe = build_pipeline(list(args.set), ds.classes, args.score_floor)
    runner = run_video if ds.kind == "video" else run_images
    col = runner(ds, pipe, out, iou, args.match, args.progress)
    metrics = compute_metrics(ds, pipe, col, iou, args.match, args.target_fpr)
    if getattr(args, "reid", False) and ds.kind != "video" and "face" in ds.classes:  # anon_core/evaluation/reid.py
        from anon_core.evaluation.reid import validate_reid

        metrics["reid"] = validate_reid(col.pairs, _load_rgb, pipe.anonymizer.mask, pipe.operating,
                                        pipe.config.masks["face"])

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str), encoding="utf-8")
    write_csv(col.rows, out / "per_image.csv")
    artifacts = [out / "metrics.json", out / "per_image.csv", out / "predictions.jsonl"]
    if plot_pr(metrics, out / "pr_curve.png"):
        artifacts.append(out / "pr_curve.png")
    if col.gallery.save(out / "worst_misses.png"):
        artifacts.append(out / "worst_misses.png")
    written = None
    if args.write_config:
        if args.target_fpr is None:
            raise ValueError("--write-config needs --target-fpr")
        written = write_config(metrics, Path(args.write_config))
        artifacts.append(Path(args.write_config))

    summary: dict = {"data": str(ds.root), "kind": ds.kind, "n_images": ds.n_images, "config_hash": pipe.deploy_hash}
    for c, res in metrics["detection"].items():
        at = res["at_threshold"]
        s = {"threshold": at["threshold"], "ap": res["ap"], "ap_50_95": res["ap_50_95"], "precision": at["precision"],
             "recall": at["recall"], "fpr": at["fpr"], "fp_per_image": at["fp_per_image"],
             "leak_rate": metrics["leak"].get(c, {}).get("leak_rate")}
        cal = (metrics.get("calibration") or {}).get(c)
        if cal is not None:
            s["calibrated"] = {"target_fpr": cal["target_fpr"], "threshold": cal.get("threshold"),
                               "recall": cal.get("recall"), "fpr": cal.get("fpr")}
        summary[c] = s
    summary["over_masking"] = metrics["over_masking"]
    if "reid" in metrics:
        summary["reid_rank1"] = {k: v["all"] for k, v in metrics["reid"]["rank1"].items()}
    if "video" in metrics:
        v = metrics["video"]
        summary["video"] = {k: {"frame_leak_rate": v[k]["frame_leak_rate"], "leak_rate": v[k]["leak_rate"],
                                "max_longest_leak_run": v[k]["max_longest_leak_run"]}
                            for k in ("tracked", "per_frame_masking")}
    if written is not None:
        summary["config_written"] = {"path": str(args.write_config), "overrides": written}
    if not args.no_mlflow:
        summary["mlflow"] = log_mlflow(metrics, args, out, artifacts)
    summary["out"] = str(out.resolve())
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        summary = validate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"anon validate: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    from anon_core.offline import go_offline

    go_offline()
    logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    p = add_arguments(argparse.ArgumentParser(prog="anon validate", description=__doc__.split("\n")[0]))
    return cmd_validate(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


