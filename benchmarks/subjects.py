"""Subject-level redaction on ../shared/data/face_video (5 identities, one clip each).

A. Threshold calibration (5-fold CV over time blocks): in fold k each identity's references are 3 frames
   of block k of its clip; every face outside block k (+-5 frames) is matched against every identity's
   references. Per-frame and track-mean (the rule SubjectSession uses: running mean of the distances of
   the track so far) false match / false non-match rates; the threshold of fold k is chosen on the other
   four folds (middle of the range where both rates are <= 1 %, else the one minimising their maximum).
B. End to end: the real video pipeline (tracking on) with subjects.redact_only / subjects.keep = the 3
   reference frames of fold 0 of one identity, run on all 5 clips; "masked" per frame = the labelled face
   is not leaked (anon_core.evaluation.leak, SSIM + retained detail vs. the decoded input). Frames of
   block 0 (+-5) of the subject's own clip are not scored.

    .venv/bin/python benchmarks/subjects.py --cache /tmp/anon-subjects-cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.evaluation.groundtruth import GroundTruthImage  # noqa: E402
from anon_core.evaluation.leak import leak_video  # noqa: E402
from anon_core.media.probe import MediaType  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402
from anon_core.subjects import embedder as emb_mod  # noqa: E402
from anon_core.video import anonymize_video  # noqa: E402
from benchmarks.video_leak import decode, face_video_clips  # noqa: E402
from jobs.config import load_config  # noqa: E402

K = 5
MARGIN = 5


def _key(a: np.ndarray, extra: bytes = b"") -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes() + extra, digest_size=16).hexdigest()


class Cache:
    """Detections and embeddings are the same in every run: computed once (and kept on disk)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.det: dict = {}
        self.emb: dict = {}
        if path and path.exists():
            self.det, self.emb = pickle.loads(path.read_bytes())

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(pickle.dumps((self.det, self.emb)))

    def wrap_detect(self, an: Anonymizer) -> None:
        real = an.detect

        def detect(frames, min_score=None, *, all_detectors=False):
            keys = [_key(f, f"{min_score}/{all_detectors}".encode()) for f in frames]
            miss = [i for i, k in enumerate(keys) if k not in self.det]
            if miss:
                for i, d in zip(miss, real([frames[i] for i in miss], min_score, all_detectors=all_detectors)):
                    self.det[keys[i]] = d
            return [self.det[k][np.arange(len(self.det[k]))] for k in keys]  # copies

        an.detect = detect

    def wrap_embed(self) -> None:
        real = emb_mod.FaceEmbedder.embed
        cache = self.emb

        def embed(self_, rgb, boxes):
            k = _key(rgb, np.round(np.asarray(boxes, np.float64), 1).tobytes())
            if k not in cache:
                cache[k] = real(self_, rgb, boxes)
            return cache[k]

        emb_mod.FaceEmbedder.embed = embed


def blocks(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference frame indices, frames excluded from scoring) of fold k in a clip of n frames."""
    blk = np.arange(n)[k * n // K:(k + 1) * n // K]
    refs = blk[np.linspace(0, len(blk) - 1, 3).astype(int)]
    excl = np.arange(max(0, blk[0] - MARGIN), min(n, blk[-1] + MARGIN + 1))
    return refs, excl


def gt_embeddings(clips, an: Anonymizer, fe) -> dict[str, np.ndarray]:
    """Embedding of the labelled face per frame: the detection whose centre is in the GT box (else the GT box)."""
    out = {}
    for path, gt in clips:
        frames = decode(path)
        dets = []
        for i in range(0, len(frames), 8):
            dets += an.detect(frames[i:i + 8], min_score=an.config.video.candidate_score)
        E = []
        for f, d, (g, _) in zip(frames, dets, gt):
            g = g[0]
            box = g
            if len(d):
                c = (d.xyxy[:, :2] + d.xyxy[:, 2:]) / 2
                inside = (c[:, 0] > g[0]) & (c[:, 0] < g[2]) & (c[:, 1] > g[1]) & (c[:, 1] < g[3])
                if inside.any():
                    box = d.xyxy[int(np.argmax(inside * d.scores))]
            E.append(fe.embed(f, np.asarray(box)[None])[0])
        out[path.stem] = np.asarray(E)
    return out


def fold_distances(E: dict[str, np.ndarray], k: int) -> tuple[list, list]:
    """Genuine and impostor (per-frame distance, track-mean distance) arrays for fold k."""
    refs = {n: e[blocks(len(e), k)[0]] for n, e in E.items()}
    gen, imp = [], []
    for n, e in E.items():
        keep = np.setdiff1d(np.arange(len(e)), blocks(len(e), k)[1])
        for m, r in refs.items():
            d = emb_mod.distances(e, r)
            fin = np.isfinite(d)
            cm = np.cumsum(np.where(fin, d, 0)) / np.maximum(np.cumsum(fin), 1)
            (gen if m == n else imp).append((d[keep], cm[keep]))
    return gen, imp


def rates(pairs_gen, pairs_imp, t: float, rule: int) -> tuple[float, float]:
    g = np.concatenate([p[rule] for p in pairs_gen])
    i = np.concatenate([p[rule] for p in pairs_imp])
    return float((g > t).mean()), float((i <= t).mean())  # FNMR, FMR


def choose(gen, imp, grid) -> float:
    r = np.array([rates(gen, imp, t, 1) for t in grid])
    ok = np.flatnonzero((r[:, 0] <= 0.01) & (r[:, 1] <= 0.01))
    if len(ok):
        return float(grid[ok[len(ok) // 2]])  # the middle of the safe range: robust to drift
    return float(grid[int(np.argmin(r.max(axis=1)))])


def calibrate(E: dict[str, np.ndarray]) -> dict:
    grid = np.round(np.arange(0.40, 0.80, 0.01), 2)
    per = [fold_distances(E, k) for k in range(K)]
    folds = []
    for k in range(K):
        tg = [p for j in range(K) if j != k for p in per[j][0]]
        ti = [p for j in range(K) if j != k for p in per[j][1]]
        t = choose(tg, ti, grid)
        fnmr_f, fmr_f = rates(per[k][0], per[k][1], t, 0)
        fnmr_t, fmr_t = rates(per[k][0], per[k][1], t, 1)
        folds.append({"fold": k, "threshold": t, "per_frame": {"fnmr": round(fnmr_f, 4), "fmr": round(fmr_f, 4)},
                      "track_mean": {"fnmr": round(fnmr_t, 4), "fmr": round(fmr_t, 4)}})
    table = {}
    for t in (0.5, 0.55, 0.6, 0.65):
        allg = [p for k in range(K) for p in per[k][0]]
        alli = [p for k in range(K) for p in per[k][1]]
        table[str(t)] = {"per_frame": dict(zip(("fnmr", "fmr"), np.round(rates(allg, alli, t, 0), 4).tolist())),
                         "track_mean": dict(zip(("fnmr", "fmr"), np.round(rates(allg, alli, t, 1), 4).tolist()))}
    ts = [f["threshold"] for f in folds]
    return {"folds": folds, "threshold_median": float(np.median(ts)), "threshold_spread": [min(ts), max(ts)],
            "pooled_by_threshold": table}


def end_to_end(clips, sets, cache: Cache, threshold: float, work: Path, data: Path) -> dict:
    frames_of = {p.stem: decode(p) for p, _ in clips}
    jpgs = {p.stem: sorted((data / p.stem / "img1").glob("*.jpg")) for p, _ in clips}
    out = {}
    for subject in sorted(frames_of):
        refs = [str(jpgs[subject][i]) for i in blocks(len(frames_of[subject]), 0)[0]]
        for mode in ("redact_only", "keep"):
            cfg = load_config(sets + [f"subjects.{mode}=[{','.join(refs)}]", f"subjects.threshold={threshold}"])
            an = Anonymizer(cfg)
            cache.wrap_detect(an)
            row = {}
            for path, gt in clips:
                dst = work / f"{path.stem}.{mode}.mp4"
                anonymize_video(an, str(path), str(dst), MediaType("video", "mp4"), AuditRecord())
                orig, anon = frames_of[path.stem], decode(dst)
                h, w = orig[0].shape[:2]
                skip = set(blocks(len(orig), 0)[1].tolist()) if path.stem == subject else set()
                items = [(i, o, a, GroundTruthImage(file=f"{path.stem}#{i}", width=w, height=h, boxes=gt[i][0],
                                                    ignore=gt[i][1], track_ids=np.arange(len(gt[i][0]))))
                         for i, (o, a) in enumerate(zip(orig, anon)) if i not in skip]
                r = leak_video(items)
                row[path.stem] = {"frames": r["n_evaluated"], "masked": r["n_evaluated"] - r["n_leaked"]}
            own = row[subject]
            others = [v for k, v in row.items() if k != subject]
            o_frames, o_masked = sum(v["frames"] for v in others), sum(v["masked"] for v in others)
            out[f"{subject}/{mode}"] = {
                "subject_masked": round(own["masked"] / own["frames"], 4), "subject_frames": own["frames"],
                "others_masked": round(o_masked / o_frames, 4), "others_frames": o_frames}
            print(json.dumps({f"{subject}/{mode}": out[f"{subject}/{mode}"]}), flush=True)
            cache.save()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--face-video", default=str(ROOT.parent / "shared/data/face_video"))
    ap.add_argument("--cache", default="", help="folder for cached detections/embeddings (reruns are fast)")
    ap.add_argument("--threshold", type=float, default=None, help="end-to-end threshold (default: CV median)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for the pipeline")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    cache = Cache(Path(args.cache) / "cache.pkl" if args.cache else None)
    cache.wrap_embed()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = face_video_clips(Path(args.face_video), work, 10_000)
        sets = ["policy=faces", *args.set]
        an = Anonymizer(load_config(sets))
        cache.wrap_detect(an)
        E = gt_embeddings(clips, an, emb_mod.FaceEmbedder())
        cache.save()
        cal = calibrate(E)
        print(json.dumps({"calibration": cal}, indent=1), flush=True)
        result = {"calibration": cal}
        if not args.skip_e2e:
            t = args.threshold or cal["threshold_median"]
            runs = end_to_end(clips, sets, cache, t, work, Path(args.face_video))
            result["end_to_end"] = {"threshold": t, "runs": runs}
    ro = {k: v for k, v in result.get("end_to_end", {}).get("runs", {}).items() if k.endswith("redact_only")}
    kp = {k: v for k, v in result.get("end_to_end", {}).get("runs", {}).items() if k.endswith("/keep")}
    if ro:
        result["end_to_end"]["summary"] = {
            "redact_only": {"subject_masked_min": min(v["subject_masked"] for v in ro.values()),
                            "others_masked_max": max(v["others_masked"] for v in ro.values())},
            "keep": {"subject_visible_min": round(min(1 - v["subject_masked"] for v in kp.values()), 4),
                     "others_masked_min": min(v["others_masked"] for v in kp.values())}}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
