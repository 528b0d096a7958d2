"""The recall-first face cascade (issue 15): cache per-view evidence, train the verifier, cross-validate, run live.

Stages (each caches under .cache/face_cascade/, so fusion and verifier experiments re-run offline in seconds):

    python benchmarks/face_cascade.py views --data ../shared/data/faces [--views c1,r1,r2,...]
        every network on every view of every image at a low threshold (the expensive part)
    python benchmarks/face_cascade.py features --data ../shared/data/faces --set default
        fuse a set of views into candidates, second look at each, every feature per candidate
    python benchmarks/face_cascade.py fit --set default
        train the verifier on faces_train, choose its threshold by 5-fold CV over faces, write
        anon_core/detectors/params/<name>.json and benchmarks/results/face_cascade_<set>.json
    python benchmarks/face_cascade.py live --configs default,archive [--limit N]
        the FaceDetector end to end (config presets), deface 1.5 in the same run, same metrics

Evaluation matching: anon_core/evaluation (greedy, IoU >= 0.5, ignore regions neither way).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anon_core.detections import Detections  # noqa: E402
from anon_core.detectors.face_cascade import PARAMS_DIR, export_gradient_boosting  # noqa: E402
from anon_core.detectors.face_models import FACE_MODELS  # noqa: E402
from anon_core.detectors.multiview import fuse_evidence, plan_views, run_views  # noqa: E402
from anon_core.evaluation import evaluate, load_jsonl  # noqa: E402
from anon_core.evaluation.matching import match_image  # noqa: E402

CACHE = ROOT / ".cache" / "face_cascade"
CAND = 0.05  # per-view decode threshold of the cache (every set re-cuts at its own candidate threshold)
# view name -> (network, scale, rotation, flip, max_side)
VIEWS = {
    "c1": ("centerface", 1.0, 0, False, 1920),
    "r1": ("retinaface", 1.0, 0, False, 1920),
    "r2": ("retinaface", 2.0, 0, False, 1920),  # the default's small-face view (capped at 1920 px)
    "c2": ("centerface", 2.0, 0, False, 1920),
    "c1f": ("centerface", 1.0, 0, True, 1920),
    "r1f": ("retinaface", 1.0, 0, True, 1920),
    **{f"{n[0]}1r{k}": (n, 1.0, k, False, 1920) for n in ("centerface", "retinaface") for k in (1, 2, 3)},
}
# candidate sets: which cached views are fused, at which per-view threshold, with which second look
SETS = {
    "default": dict(views=["c1", "r1", "r2"], cand=0.1, crop_nets=["retinaface", "centerface"], crop=160,
                    context=3.0),
    "archive": dict(views=["c1", "r1", "r2", "c2", "c1r1", "c1r2", "c1r3", "r1r1", "r1r2", "r1r3"], cand=0.1,
                    crop_nets=["retinaface", "centerface"], crop=160, context=3.0),
}
UPSCALE_MAX_FACE = 48.0
FUSE_IOU = 0.4
SIZE_BANDS = ((10, 24), (24, 64), (64, 1e9))


def _data_name(data: str) -> str:
    return Path(data).resolve().name


def _nets() -> dict:
    return {n: FACE_MODELS[n](device="cpu") for n in ("centerface", "retinaface")}


def _image(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# -- stage 1: raw per-view evidence


def cmd_views(args) -> None:
    gts = load_jsonl(args.data)[: args.limit or None]
    names = [v for v in args.views.split(",") if v]
    nets = _nets()
    out_dir = CACHE / "views" / _data_name(args.data)
    out_dir.mkdir(parents=True, exist_ok=True)
    cost = {n: 0.0 for n in names}
    t_all = time.perf_counter()
    for i, gt in enumerate(gts):
        f = out_dir / f"{i:04d}.pkl"
        have = pickle.loads(f.read_bytes()) if f.exists() else {}
        todo = [n for n in names if n not in have]
        if not todo:
            continue
        img = _image(gt.path)
        for n in todo:
            net, scale, rot, flip, max_side = VIEWS[n]
            views = plan_views(img.shape[:2], 0, [scale], max_side, flip, 960, rotations=[rot] if rot else ())
            views = [v for v in views if v.rot == rot and v.flip == flip and (v.scale > 1) == (scale > 1)]
            t0 = time.perf_counter()
            parts = run_views(nets[net], [img], views, CAND, 8).get(0, []) if views else []
            cost[n] += time.perf_counter() - t0
            have[n] = [(b, s, lm, v, nm) for b, s, lm, v, nm in parts]
        f.write_bytes(pickle.dumps(have))
        if i % 20 == 0:
            print(f"{i}/{len(gts)} {time.perf_counter() - t_all:.0f}s", flush=True)
    print(json.dumps({n: round(c / max(len(gts), 1) * 1000, 1) for n, c in cost.items()}), "ms/image (wall)")


def load_views(data: str, n: int) -> list[dict]:
    d = CACHE / "views" / _data_name(data)
    return [pickle.loads((d / f"{i:04d}.pkl").read_bytes()) for i in range(n)]


def fuse_set(cached: dict, spec: dict, shape: tuple[int, int]):
    parts = []
    for name in spec["views"]:
        for b, s, lm, v, net in cached[name]:
            k = s >= spec["cand"]
            if k.any():
                parts.append((b[k], s[k], lm[k], v, net))
    h, w = shape
    return fuse_evidence(parts, FUSE_IOU, w, h, "face", UPSCALE_MAX_FACE, "noisy_or")


# -- stage 2: candidates and their features


def cmd_features(args) -> None:
    """Candidates and their features; the second look of each network is cached on its own (the slow part)."""
    from anon_core.detectors.face_cascade import context_features, geometry_features, second_look

    spec = SETS[args.set]
    gts = load_jsonl(args.data)[: args.limit or None]
    out = CACHE / "features" / args.set
    out.mkdir(parents=True, exist_ok=True)
    base_f = out / f"{_data_name(args.data)}.pkl"
    cached = None
    if base_f.exists() and len(pickle.loads(base_f.read_bytes())["rows"]) == len(gts):
        base = pickle.loads(base_f.read_bytes())
        if "ctx_overlap" not in base["rows"][0]["cols"]:  # a cache from before the context features
            for r in base["rows"]:
                d = Detections(r["xyxy"], r["scores"], np.full(len(r["scores"]), "face", object))
                r["cols"].update(context_features(d))
            base_f.write_bytes(pickle.dumps(base))
    else:
        cached = load_views(args.data, len(gts))
        view_keys = sorted({_key(v, net) for c in cached for n in spec["views"] for _b, _s, _l, v, net in c[n]})
        rows = []
        for i, (gt, c) in enumerate(zip(gts, cached)):
            dets, ev, rot = fuse_set(c, spec, (gt.height, gt.width))
            n = len(dets)
            cols = {"fused": dets.scores.astype(np.float64)}
            cols.update({f"ev_{k}": np.asarray(ev.get(k, np.zeros(n)), np.float64) for k in view_keys})
            cols["n_views"] = sum((cols[f"ev_{k}"] > 0).astype(np.float64) for k in view_keys)
            cols.update(geometry_features(dets, rot))
            cols.update(context_features(dets))
            cols["rotated"] = (rot != 0).astype(np.float64)
            m = match_image(gt.boxes, dets.xyxy, dets.scores, gt.ignore)
            rows.append({"image": i, "cols": cols, "xyxy": dets.xyxy, "lm": dets.landmarks, "rot": rot,
                         "scores": dets.scores, "tp": m.tp, "fp": m.fp, "ign": m.ignored})
        base = {"views": view_keys, "rows": rows}
        base_f.write_bytes(pickle.dumps(base))
    print(f"{sum(len(r['tp']) for r in base['rows'])} candidates", flush=True)
    nets = _nets()
    for name in [n for n in args.look.split(",") if n]:
        look_f = out / f"{_data_name(args.data)}.look_{name}_{spec['crop']}.pkl"
        if look_f.exists() and len(pickle.loads(look_f.read_bytes())) == len(gts):
            continue
        looks, t0 = [], time.perf_counter()
        for i, (gt, r) in enumerate(zip(gts, base["rows"])):
            dets = Detections(r["xyxy"], r["scores"], np.full(len(r["scores"]), "face", object), landmarks=r["lm"])
            looks.append(second_look(_image(gt.path), dets, r["rot"], {name: nets[name]}, spec["crop"],
                                     spec["context"]))
            if i % 20 == 0:
                print(f"look {name} {i}/{len(gts)} {time.perf_counter() - t0:.0f}s", flush=True)
        look_f.write_bytes(pickle.dumps(looks))
        print(f"second look {name}: {(time.perf_counter() - t0) / max(len(gts), 1) * 1000:.0f} ms/image (wall)")


# -- stage 3: the verifier model, k-fold CV of its threshold

# feature groups, to measure what each stage adds
GEOMETRY = ["log_side", "aspect", "eye_dist", "eye_tilt", "eye_y", "mouth_y", "eye_mouth", "nose_x", "nose_y",
            "lm_inside"]
CONTEXT = ["ctx_overlap", "ctx_inside", "ctx_rel_size", "ctx_n_conf"]
GBDT = dict(n_estimators=150, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=0)


def feature_sets(views: list[str], looks: list[str]) -> dict[str, list[str]]:
    ev = ["fused", *[f"ev_{k}" for k in views], "n_views"]
    look = [f"look{s}_{n}" for n in looks for s in ("", "_iou")]
    rotated = ["rotated"] if any("r" in k.split("@")[1] for k in views) else []
    return {
        "evidence": ev,
        "evidence+geometry": ev + GEOMETRY,
        "evidence+context": ev + ["log_side"] + CONTEXT,
        "evidence+look": ev + ["log_side"] + look,
        "evidence+geometry+context": ev + GEOMETRY + CONTEXT,
        "all": ev + GEOMETRY + CONTEXT + look + rotated,
    }


def available_looks(feat: dict) -> list[str]:
    cols = feat["rows"][0]["cols"]
    return sorted(k[len("look_"):] for k in cols if k.startswith("look_") and not k.startswith("look_iou_"))


def load_features(set_name: str, data: str, limit: int = 0) -> dict:
    d = CACHE / "features" / set_name
    feat = pickle.loads((d / f"{_data_name(data)}.pkl").read_bytes())
    crop = SETS[set_name]["crop"]
    for f in sorted(d.glob(f"{_data_name(data)}.look_*_{crop}.pkl")):
        for r, look in zip(feat["rows"], pickle.loads(f.read_bytes())):
            r["cols"].update(look)
    if limit:
        feat["rows"] = feat["rows"][:limit]
    return feat


def matrix(feat: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, keep = [], [], []
    for r in feat["rows"]:
        n = len(r["tp"])
        xs.append(np.stack([np.asarray(r["cols"].get(f, np.zeros(n)), np.float64) for f in names], axis=1)
                  if n else np.zeros((0, len(names))))
        ys.append(r["tp"])
        keep.append(~r["ign"])
    return np.concatenate(xs), np.concatenate(ys).astype(int), np.concatenate(keep)


def train(feat: dict, names: list[str]):
    from sklearn.ensemble import GradientBoostingClassifier

    x, y, keep = matrix(feat, names)
    return GradientBoostingClassifier(**GBDT).fit(x[keep], y[keep])


def per_image(feat: dict, flat: np.ndarray) -> list[np.ndarray]:
    out, i = [], 0
    for r in feat["rows"]:
        n = len(r["tp"])
        out.append(flat[i : i + n])
        i += n
    return out


def metrics(pairs: list, t: float) -> dict:
    """anon_core.evaluation.evaluate at one threshold, the columns of the RESULTS tables."""
    m = evaluate(pairs, iou=0.5, score_threshold=t, include_curve=False, sweep=())
    a, by = m["at_threshold"], m["recall_by_size"]
    return {"threshold": round(float(t), 4), "ap50": round(m["ap"], 4), "recall": round(a["recall"], 4),
            "precision": round(a["precision"] or 0, 4), "fp_per_image": round(a["fp_per_image"], 3),
            "recall_10_24": round(by["10-24"]["recall"] or 0, 4), "recall_24_64": round(by["24-64"]["recall"] or 0, 4),
            "recall_64+": round(by["64+"]["recall"] or 0, 4)}


class Matcher:
    """anon_core.evaluation's greedy matching at IoU 0.5 with each image's IoU matrix computed once, so that
    re-scoring the same candidates (a model, a fold) costs one greedy pass; `evaluate` checks the final numbers."""

    def __init__(self, feat: dict, gts: list):
        from anon_core.evaluation.matching import on_ignore, similarity

        self.gts = gts
        self.rows = feat["rows"]
        self.pre = []
        for gt, r in zip(gts, self.rows):
            sim, allowed = similarity(r["xyxy"].astype(float), gt.boxes, "iou")
            wh = gt.boxes[:, 2:] - gt.boxes[:, :2]
            self.pre.append((sim, allowed, on_ignore(r["xyxy"].astype(float), gt.ignore),
                             wh.min(axis=1) if len(wh) else np.zeros(0)))

    def match(self, scores: list[np.ndarray]) -> list[tuple]:
        from anon_core.evaluation.matching import greedy_match

        out = []
        for (sim, allowed, hit, size), s in zip(self.pre, scores):
            m = greedy_match(s, sim, allowed, hit, 0.5)
            out.append((np.asarray(s, float), m.tp, m.fp, m.gt_score, size))
        return out


def _pool(matched: list[tuple], idx) -> tuple:
    sel = [matched[i] for i in idx]
    return tuple(np.concatenate([m[k] for m in sel]) for k in range(5)) + (len(sel),)


def metrics_fast(pool: tuple, t: float) -> dict:
    from anon_core.evaluation.metrics import average_precision

    s, tp, fp, gs, size, n_img = pool
    keep = tp | fp
    order = np.argsort(-s[keep], kind="stable")
    ctp, cfp = np.cumsum(tp[keep][order]), np.cumsum(fp[keep][order])
    ap = average_precision(ctp / np.maximum(ctp + cfp, 1), ctp / max(len(gs), 1))
    sel = s >= t
    ntp, nfp = int((tp & sel).sum()), int((fp & sel).sum())
    found = gs >= t

    def band(lo, hi):
        m = (size >= lo) & (size < hi)
        return round(float(found[m].mean()), 4) if m.any() else None

    return {"threshold": round(float(t), 4), "ap50": round(float(ap), 4), "recall": round(float(found.mean()), 4),
            "precision": round(ntp / max(ntp + nfp, 1), 4), "fp_per_image": round(nfp / max(n_img, 1), 3),
            "recall_10_24": band(10, 24), "recall_24_64": band(24, 64), "recall_64+": band(64, 1e12)}


def pick_threshold(pool: tuple, target: float, min_det: int = 50) -> float:
    """The lowest threshold at which precision on these images is still >= target (most recall at that precision;
    operating points at distinct scores, past the first min_det detections)."""
    s, tp, fp = pool[0], pool[1], pool[2]
    keep = tp | fp
    s, tp, fp = s[keep], tp[keep], fp[keep]
    order = np.argsort(-s, kind="stable")
    s, ctp, cfp = s[order], np.cumsum(tp[order]), np.cumsum(fp[order])
    last = np.r_[s[1:] != s[:-1], True]
    s, ctp, cfp = s[last], ctp[last], cfp[last]
    ok = np.flatnonzero((ctp / np.maximum(ctp + cfp, 1) >= target) & (ctp + cfp >= min_det))
    return float(s[ok[-1]]) if len(ok) else 1.0


def cross_validate(matched: list[tuple], folds: int, target: float, seed: int = 0) -> dict:
    """Threshold chosen on k-1 folds (by image), measured on the held-out fold; then one threshold on all folds."""
    idx = np.random.default_rng(seed).permutation(len(matched))
    parts = np.array_split(idx, folds)
    rows = []
    for k in range(folds):
        t = pick_threshold(_pool(matched, np.concatenate([p for j, p in enumerate(parts) if j != k])), target)
        rows.append(metrics_fast(_pool(matched, parts[k]), t))
    everything = _pool(matched, idx)
    chosen = pick_threshold(everything, target)
    at_chosen = [metrics_fast(_pool(matched, p), chosen) for p in parts]
    summary = {}
    for name, rs in (("held_out", rows), ("at_chosen", at_chosen)):
        summary[name] = {k: {"mean": round(float(np.mean([r[k] for r in rs])), 4),
                             "std": round(float(np.std([r[k] for r in rs])), 4),
                             "min": round(float(np.min([r[k] for r in rs])), 4),
                             "max": round(float(np.max([r[k] for r in rs])), 4)}
                         for k in ("threshold", "recall", "precision", "fp_per_image")}
    return {"target_precision": target, "folds": rows, "chosen_threshold": round(chosen, 4),
            "folds_at_chosen": at_chosen, "summary": summary, "all": metrics_fast(everything, chosen)}


def cmd_fit(args) -> None:
    spec = SETS[args.set]
    train_feat = load_features(args.set, args.train, args.train_limit)
    dev_feat = load_features(args.set, args.data)
    gts = load_jsonl(args.data)[: len(dev_feat["rows"])]
    views = dev_feat["views"]
    report = {"set": args.set, "spec": spec, "gbdt": GBDT, "train_images": len(train_feat["rows"]), "variants": {}}
    matcher = Matcher(dev_feat, gts)
    base = [r["cols"]["fused"] for r in dev_feat["rows"]]
    report["variants"]["noisy_or (stage 1 only)"] = cross_validate(matcher.match(base), args.folds, args.target)
    looks = [n for n in available_looks(dev_feat) if n in available_looks(train_feat)]
    fsets = feature_sets(views, looks)
    best = None
    for name, names in fsets.items():
        t0 = time.perf_counter()
        model = train(train_feat, names)
        x, _, _ = matrix(dev_feat, names)
        p = model.predict_proba(x)[:, 1]
        cv = cross_validate(matcher.match(per_image(dev_feat, p)), args.folds, args.target)
        cv["train_s"] = round(time.perf_counter() - t0, 1)
        report["variants"][name] = cv
        if name == "all":
            best = (model, names)
    for name, cv in report["variants"].items():
        s = cv["summary"]["held_out"]
        r = s["recall"]
        print(f"{name:28s} held-out recall {r['mean']:.4f} [{r['min']:.3f}-{r['max']:.3f}]"
              f" precision {s['precision']['mean']:.4f} [{s['precision']['min']:.3f}-{s['precision']['max']:.3f}]"
              f" thr {cv['chosen_threshold']:.3f} all: {json.dumps(cv['all'])}")
    out = ROOT / "benchmarks" / "results" / f"face_cascade_{args.set}.json"
    out.write_text(json.dumps(report, indent=1))
    if args.write:
        model, names = best
        params = {"name": args.name or f"face_cascade_{args.set}", "views": views, "crop_nets": looks,
                  "crop": spec["crop"], "context": spec["context"],
                  "model": export_gradient_boosting(model, names),
                  "recipe": {"command": f"python benchmarks/face_cascade.py fit --set {args.set} --write",
                             "train": "faces_train (400 WIDER train images), candidates labelled by greedy IoU>=0.5"
                                      " matching, ignore-region candidates left out",
                             "gbdt": GBDT, "threshold_cv": {"folds": args.folds, "target_precision": args.target,
                                                            "chosen": report["variants"]["all"]["chosen_threshold"]}}}
        PARAMS_DIR.mkdir(exist_ok=True)
        (PARAMS_DIR / f"{params['name']}.json").write_text(json.dumps(params, separators=(",", ":")))
        print("wrote", PARAMS_DIR / f"{params['name']}.json")


# -- stage 1 alone: which views pay (noisy-OR fusion, thresholds by k-fold CV)

STAGE1 = {
    "default views (c1 r1 r2)": ["c1", "r1", "r2"],
    "+ rot180": ["c1", "r1", "r2", "c1r2", "r1r2"],
    "+ rot90/270": ["c1", "r1", "r2", "c1r1", "c1r3", "r1r1", "r1r3"],
    "+ rot90/180/270": ["c1", "r1", "r2", "c1r1", "c1r2", "c1r3", "r1r1", "r1r2", "r1r3"],
    "+ rot90/180/270 retina only": ["c1", "r1", "r2", "r1r1", "r1r2", "r1r3"],
    "+ centerface 2x": ["c1", "r1", "r2", "c2"],
    "+ centerface 2x + rot90/180/270": ["c1", "r1", "r2", "c2", "c1r1", "c1r2", "c1r3", "r1r1", "r1r2", "r1r3"],
}


def cmd_stage1(args) -> None:
    gts = load_jsonl(args.data)[: args.limit or None]
    cached = load_views(args.data, len(gts))
    targets = [float(t) for t in args.targets.split(",")]
    only = [n for n in args.only.split(";") if n]
    out_f = ROOT / "benchmarks" / "results" / "face_cascade_stage1.json"
    report = json.loads(out_f.read_text()) if out_f.exists() else {}
    for name, views in STAGE1.items():
        if only and name not in only:
            continue
        if any(v not in c for c in cached for v in views):
            print("skip (not cached):", name)
            continue
        spec = {"views": views, "cand": args.cand}
        rows = []
        for gt, c in zip(gts, cached):
            d, _ev, _rot = fuse_set(c, spec, (gt.height, gt.width))
            rows.append({"xyxy": d.xyxy, "s": d.scores})
        matched = Matcher({"rows": rows}, gts).match([r["s"] for r in rows])
        row = {"views": views, "candidate_recall": metrics_fast(_pool(matched, range(len(matched))), args.cand)}
        for t in targets:
            cv = cross_validate(matched, args.folds, t)
            row[f"cv_p{t:g}"] = {"summary": cv["summary"], "chosen_threshold": cv["chosen_threshold"],
                                  "all": cv["all"], "folds": cv["folds"]}
            h = cv["summary"]["held_out"]
            print(f"{name:36s} P>={t:g}: held-out recall {h['recall']['mean']:.4f}±{h['recall']['std']:.3f} "
                  f"precision {h['precision']['mean']:.4f}±{h['precision']['std']:.3f} thr {cv['chosen_threshold']:.3f}"
                  f" all {json.dumps(cv['all'])}", flush=True)
        report[name if args.cand == 0.1 else f"{name} (views decoded at {args.cand:g})"] = row
    out_f.write_text(json.dumps(report, indent=1))


# -- live: the detector as configured, deface in the same run

# the default before issue 15 (stage 1 only), for the side-by-side rows
HYBRID_0_62 = {"model": ["centerface", "retinaface"], "upscale_model": "retinaface", "threshold": 0.62,
               "candidate_threshold": 0.1, "scales": [1.0, 2.0], "flip": False, "max_side": 1920, "tile_size": 960,
               "upscale_max_face": 48.0, "score_fusion": "noisy_or"}


def preset(name: str) -> dict:
    from jobs.config import load_config

    if name == "hybrid_0.62":
        return dict(HYBRID_0_62)
    return dict(load_config([] if name == "default" else [f"detector={name}"]).detectors["face"].params)


def cmd_live(args) -> None:
    from anon_core.detectors import create_detector

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from face_configs import run_deface

    gts = load_jsonl(args.data)[: args.limit or None]
    paths = [Path(g.path) for g in gts]
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() and args.append else {}
    names = [n for n in args.configs.split(",") if n]
    for name in (["deface_0.2"] if not args.no_deface else []) + names:
        if name == "deface_0.2":
            dets, sec = run_deface(paths)
            t = 0.2
        else:
            params = preset(name)
            det = create_detector("face", **params)
            det.ensure_loaded()
            dets, t0 = [], time.perf_counter()
            for pth in paths:
                # down to the candidate threshold, so AP covers the whole curve; recall etc. are cut at `t`
                dets.extend(det.detect([_image(str(pth))], min_score=params.get("candidate_threshold", 0.1)))
            sec = (time.perf_counter() - t0) / len(paths)
            t = params["threshold"]
        row = {"ms_per_image_wall": round(sec * 1000, 1), **metrics(list(zip(gts, dets)), t), "n_images": len(gts)}
        if name != "deface_0.2":
            row["params"] = params
        report[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))


def _key(v, net) -> str:
    from anon_core.detectors.multiview import evidence_key

    return evidence_key(net, v)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("views")
    a.add_argument("--data", default="../shared/data/faces")
    a.add_argument("--views", default="c1,r1,r2")
    a.add_argument("--limit", type=int, default=0)
    a = sub.add_parser("features")
    a.add_argument("--data", default="../shared/data/faces")
    a.add_argument("--set", default="default", choices=sorted(SETS))
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--look", default="retinaface", help="networks of the second look to compute (cached each)")
    a = sub.add_parser("fit")
    a.add_argument("--data", default="../shared/data/faces")
    a.add_argument("--train", default="../shared/data/faces_train")
    a.add_argument("--set", default="default", choices=sorted(SETS))
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--train-limit", type=int, default=0, help="first N training images only")
    a.add_argument("--target", type=float, default=0.90)
    a.add_argument("--write", action="store_true", help="write the parameter file of the 'all' model")
    a.add_argument("--name", default="")
    a = sub.add_parser("live")
    a.add_argument("--data", default="../shared/data/faces")
    a.add_argument("--configs", default="hybrid_0.62,default,archive")
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--no-deface", action="store_true")
    a.add_argument("--append", action="store_true")
    a.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "face_cascade_live.json"))
    a = sub.add_parser("stage1")
    a.add_argument("--data", default="../shared/data/faces")
    a.add_argument("--cand", type=float, default=0.1)
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--targets", default="0.8,0.9")
    a.add_argument("--only", default="", help="';'-separated names of STAGE1 to run")
    a.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    cmds = {"stage1": cmd_stage1, "live": cmd_live, "views": cmd_views, "features": cmd_features, "fit": cmd_fit}
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
