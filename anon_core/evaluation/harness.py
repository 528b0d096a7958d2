"""Validation harness: the shipped pipeline over annotated data, scored image by image and frame by frame.

Images: every configured detector runs once, down to a score floor, so the PR curve extends below the
operating point; masking uses the confident detections (at or above each detector's threshold), which is
what `anon anonymize` masks. Video: sequences go through the frame engine (`anon_core/video/session.py`),
the loop `anon anonymize` runs on a video file and the WebSocket stream runs on frames: weak tracks,
candidates, detect_every_k, on_analysis_error and the residual check included; each frame is scored as it
would be published. Memory stays bounded: frames are read in batches and scored as the engine releases them.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anon_core.config import AnonConfig
from anon_core.detections import Detections
from anon_core.evaluation.datasets import Dataset, load_rgb
from anon_core.evaluation.groundtruth import GroundTruthImage
from anon_core.evaluation.leak import ControlLeak, VideoLeak, add_bands, leak_image
from anon_core.evaluation.matching import match_image
from anon_core.evaluation.plots import MissGallery
from anon_core.pipeline import Anonymizer
from anon_core.video.session import FrameSession, MaskedFrame

DEFAULT_FLOOR = 0.2  # lower costs a lot on crowds: RetinaFace multi-view fusion is O(n^2) in candidates (0.05: >23 GB)


@dataclass
class ValidationPipeline:
    """The configured Anonymizer, the score floor its detectors report down to, and the operating points."""

    anonymizer: Anonymizer
    config: AnonConfig  # the configuration as the user gave it, classes narrowed to the data's
    operating: dict[str, float]  # class -> configured threshold
    detector_keys: dict[str, str]  # class -> key under `detectors.` in the config
    floor: float
    deploy_hash: str = ""  # hash of the configuration before validate narrowed its classes (= the audit's hash)

    def detect(self, frames: list[np.ndarray]) -> list[tuple[Detections, Detections]]:
        """(everything above the floor, what the configured pipeline masks) per frame."""
        out = []
        for d in self.anonymizer.detect(frames, min_score=self.floor, all_detectors=True):
            out.append((d, d[d.data["confident"]] if len(d) else d))
        return out


def build_pipeline(config: AnonConfig, classes: list[str], floor: float) -> ValidationPipeline:
    """The pipeline `config` describes, validating `classes` (unless the config names its own)."""
    deploy_hash = config.hash()
    config = copy.deepcopy(config)
    if not config.classes:
        # validate what the data labels; other classes' masks would only blur the over-masking number
        config.classes = list(classes)
    anonymizer = Anonymizer(config)
    operating: dict[str, float] = {}
    keys: dict[str, str] = {}
    for key, det in anonymizer.detectors.items():
        for c in det.classes:
            if c in config.classes and c not in operating:
                operating[c], keys[c] = float(det.threshold), key
    missing = [c for c in classes if c not in operating]
    if missing:
        raise ValueError(f"no configured detector covers {missing}; configured: {sorted(config.detectors)}")
    return ValidationPipeline(anonymizer, config, operating, keys, float(floor), deploy_hash)


@dataclass
class Collected:
    pairs: list[tuple[GroundTruthImage, Detections]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per-image CSV rows
    leak_by_class: dict[str, dict] = field(default_factory=dict)
    over: list[int] = field(default_factory=lambda: [0, 0])  # changed outside, pixels outside
    video: dict[str, dict] = field(default_factory=dict)
    gallery: MissGallery = field(default_factory=MissGallery)
    seconds_detect: float = 0.0
    n_scored: int = 0  # images/frames whose detections went into `pairs`
    # --controls: the leak metric's own checks on every scored image, per class (None: not asked for)
    controls: dict[str, ControlLeak] | None = None
    jpeg_quality: int = 92


def _pred_row(gt: GroundTruthImage, det: Detections, extra: dict | None = None) -> dict:
    row = {"file": gt.file, "width": gt.width, "height": gt.height,
           "boxes": [[round(float(v), 2) for v in b] for b in det.xyxy],
           "scores": [round(float(s), 5) for s in det.scores], "labels": [str(x) for x in det.labels]}
    row.update(extra or {})
    return row


def _leak_acc(acc: dict, gt: GroundTruthImage, res) -> None:
    acc["n_evaluated"] = acc.get("n_evaluated", 0) + res.n_evaluated
    acc["n_leaked"] = acc.get("n_leaked", 0) + res.n_leaked
    add_bands(acc.setdefault("by_size", {}), gt.boxes, res)  # boxes < 10 px are skipped by leak_image


def _score_frame(
    col: Collected, pipe: ValidationPipeline, img: np.ndarray, anon: np.ndarray, gt: GroundTruthImage,
    det: Detections, op: Detections, iou: float, match_fn: str, seconds: float, extra: dict | None = None,
) -> None:
    """Per-image accounting shared by stills and video frames: CSV row, leak per class, gallery."""
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
        if col.controls is not None:
            col.controls.setdefault(c, ControlLeak(col.jpeg_quality)).add(img, g)
    # over-masking against every labelled region of the image (all classes + ignore)
    share_res = leak_image(img, anon, GroundTruthImage(gt.file, gt.width, gt.height, np.zeros((0, 4)),
                                                       np.concatenate([gt.boxes, gt.ignore])))
    col.over[0] += share_res.changed_outside
    col.over[1] += share_res.pixels_outside
    row["over_masking"] = None if share_res.over_masking is None else round(share_res.over_masking, 6)
    col.rows.append(row)


def _collected(pipe: ValidationPipeline, controls: bool) -> Collected:
    return Collected(controls={} if controls else None, jpeg_quality=int(pipe.config.image.jpeg_quality))


def run_images(ds: Dataset, pipe: ValidationPipeline, out: Path, iou: float, match_fn: str,
               progress: bool, controls: bool = False) -> Collected:
    col = _collected(pipe, controls)
    ctx = pipe.anonymizer.mask_context()
    ctx.kind = "validate"
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for k, gt in enumerate(ds.images):
            img = load_rgb(gt.path or gt.file)
            t0 = time.perf_counter()
            det, op = pipe.detect([img])[0]
            anon, _ = pipe.anonymizer.mask(img, op, ctx, k)
            dt = time.perf_counter() - t0
            col.seconds_detect += dt
            fh.write(json.dumps(_pred_row(gt, det)) + "\n")
            col.pairs.append((gt, det))
            col.n_scored += 1
            _score_frame(col, pipe, img, anon, gt, det, op, iou, match_fn, dt)
            if progress and (k + 1) % 10 == 0:
                print(f"[validate] {k + 1}/{len(ds.images)} images", file=sys.stderr, flush=True)
    return col


def sequence_session(pipe: ValidationPipeline, fps: float, size: tuple[int, int]) -> FrameSession:
    """The frame engine for one sequence, as `anon anonymize` builds it for a video, reporting down to the floor."""
    return FrameSession(pipe.anonymizer, fps, size, kind="validate", score_floor=pipe.floor)


def run_video(ds: Dataset, pipe: ValidationPipeline, out: Path, iou: float, match_fn: str,
              progress: bool, controls: bool = False) -> Collected:
    """Frames in order through the frame engine; each released frame is scored as it would be published."""
    col = _collected(pipe, controls)
    batch = max(1, int(pipe.config.video.batch_size))
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for seq in ds.sequences:
            if not seq.frames:
                continue
            gt0 = seq.frames[0][1]
            w, h = gt0.width, gt0.height
            if not (w and h):
                h, w = load_rgb(gt0.path).shape[:2]
            session = sequence_session(pipe, seq.fps, (w, h))
            tracked, untracked = VideoLeak(), VideoLeak()
            seconds: dict[int, float] = {}

            def score(released: list[MaskedFrame], seq=seq, tracked=tracked, untracked=untracked,
                      seconds=seconds) -> None:
                for m in released:
                    frame, gt = m.meta
                    extra = {"sequence": seq.name, "frame": frame}
                    det = m.raw if m.raw is not None else Detections.empty()
                    if m.raw is not None:  # analysed: its detections feed the PR curve and the baseline
                        fh.write(json.dumps(_pred_row(gt, det, extra)) + "\n")
                        col.pairs.append((gt, det))
                        col.n_scored += 1
                        # the per-frame baseline: what masking each frame on its own detections would leak
                        op = det[det.data["confident"]] if len(det) else det
                        plain, _ = pipe.anonymizer.mask(m.source, op) if len(op) else (m.source, 0)
                        untracked.add(frame, m.source, plain, gt)
                    tracked.add(frame, m.source, m.rgb, gt)
                    _score_frame(col, pipe, m.source, m.rgb, gt, det, m.final, iou, match_fn,
                                 seconds.pop(m.index, 0.0), {**extra, "analysed": m.raw is not None})

            for start in range(0, len(seq.frames), batch):
                chunk = seq.frames[start:start + batch]
                imgs = [load_rgb(g.path) for _, g in chunk]
                before = session.timings.get("detect", 0.0)
                released = session.push(imgs, metas=chunk, times_s=[(start + j) / seq.fps for j in range(len(chunk))])
                dt = (session.timings.get("detect", 0.0) - before) / 1000
                col.seconds_detect += dt
                seconds.update({start + j: dt / len(chunk) for j in range(len(chunk))})
                score(released)
                if progress:
                    print(f"[validate] {seq.name}: {min(start + batch, len(seq.frames))}/{len(seq.frames)} frames",
                          file=sys.stderr, flush=True)
            before = session.timings.get("detect", 0.0)
            released = session.flush()
            col.seconds_detect += (session.timings.get("detect", 0.0) - before) / 1000
            score(released)
            session.verify()  # fail closed, like the video pipeline
            col.video[seq.name] = {"tracked": tracked.result(), "per_frame": untracked.result(),
                                   "scheduler": session.scheduler.stats(), "frames_detected": session.frames_detected}
    return col
