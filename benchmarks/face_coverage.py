"""Face coverage on annotated data: leak by size band and over-masking for mask geometries and person heads,
chosen by k-fold cross-validation, side by side with deface 1.5 on the same images in the same run.

Two steps, so that a grid of mask variants costs one detection pass:

    # 1. detections once per image (today's default face detector down to its candidate floor, NanoDet persons
    #    on the views the plate search shares, deface 1.5's CenterFace at its default 0.2) -> a cache (.npz)
    python benchmarks/face_coverage.py detect --data ../shared/data/faces --cache /tmp/cov/faces.npz
    # 2. mask every variant from the cache, score leak (anon_core.evaluation.leak) and over-masking, 5-fold CV
    python benchmarks/face_coverage.py score --data ../shared/data/faces --cache /tmp/cov/faces.npz \
        --out benchmarks/results/face_coverage.json

Over-masking (the figure the issue bounds at 2 %) is measured two ways, both on the output before encoding:
- `over_masking`: changed pixels (any channel > 10 levels) outside every GT and ignore box, over all pixels outside
  those boxes (anon_core.evaluation.leak.over_masking; what `anon validate` reports);
- `over_masking_fp`: the same, counting only changed pixels that are not within a GT/ignore box grown 1.3x about its
  centre (the hair line, ears and chin every face mask is meant to cover), i.e. masks of things that are no face.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_core.boxes import scale_about_centre  # noqa: E402
from anon_core.detections import Detections  # noqa: E402
from anon_core.evaluation import load_jsonl  # noqa: E402
from anon_core.evaluation.datasets import load_rgb  # noqa: E402


def _pack(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-image arrays as one concatenated array + offsets (npz-friendly)."""
    off = np.cumsum([0] + [len(r) for r in rows])
    cat = np.concatenate([np.asarray(r, np.float32).reshape(-1, width) for r in rows]) if rows else np.zeros((0, width))
    return cat.astype(np.float32), off.astype(np.int64)


def unpack(cat: np.ndarray, off: np.ndarray, i: int) -> np.ndarray:
    return cat[off[i]:off[i + 1]]


def cmd_detect(args: argparse.Namespace) -> None:
    from deface.centerface import CenterFace

    from anon_core.config import AnonConfig
    from anon_core.detectors.base import SharedWork
    from anon_core.detectors.nanodet import nanodet_for
    from anon_core.pipeline import Anonymizer

    gts = load_jsonl(args.data)
    if args.limit:
        gts = gts[: args.limit]
    cfg = AnonConfig.from_dict({"classes": ["face"]})
    an = Anonymizer(cfg)
    face_key = next(iter(an.detectors))
    # the NanoDet configuration the default plate search builds on (same arguments: same shared views)
    pspec = AnonConfig().detectors["plate"].params
    nano = nanodet_for(None, cfg.device, 0, float(pspec.get("candidate_threshold", 0.1)), 640, 600)
    net = CenterFace(backend="onnxrt")
    faces, persons, defaces = [], [], []
    t = {"anon": 0.0, "nanodet": 0.0, "deface": 0.0}
    for k, g in enumerate(gts):
        img = load_rgb(g.path)
        t0 = time.perf_counter()
        work = SharedWork()
        d = an.detect([img], min_score=args.floor, all_detectors=True)[0]
        t1 = time.perf_counter()
        whole = nano.detect([img], work, tiles=False)[0]
        full = nano.detect([img], work, tiles=True)[0]
        t2 = time.perf_counter()
        dd, _ = net(img, threshold=0.2)
        t3 = time.perf_counter()
        t["anon"] += t1 - t0
        t["nanodet"] += t2 - t1
        t["deface"] += t3 - t2
        faces.append(np.column_stack([d.xyxy, d.scores]) if len(d) else np.zeros((0, 5)))
        rows = []
        for view, p in ((0, whole), (1, full)):
            p = p[p.labels == "person"] if len(p) else p
            if len(p):
                rows.append(np.column_stack([p.xyxy, p.scores, np.full(len(p), view)]))
        persons.append(np.concatenate(rows) if rows else np.zeros((0, 6)))
        defaces.append(np.asarray(dd[:, :5]) if len(dd) else np.zeros((0, 5)))
        if (k + 1) % 10 == 0:
            print(f"[detect] {k + 1}/{len(gts)} {json.dumps({a: round(b / (k + 1), 2) for a, b in t.items()})}",
                  file=sys.stderr, flush=True)
    fc, fo = _pack(faces, 5)
    pc, po = _pack(persons, 6)
    dc, do = _pack(defaces, 5)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.cache, files=np.array([g.file for g in gts]), faces=fc, faces_off=fo, persons=pc,
                        persons_off=po, deface=dc, deface_off=do, floor=args.floor,
                        threshold=float(an.detectors[face_key].threshold),
                        seconds=json.dumps({a: b / max(len(gts), 1) for a, b in t.items()}),
                        config_hash=cfg.hash())
    print(json.dumps({"cache": args.cache, "n_images": len(gts), "seconds_per_image": {a: b / max(len(gts), 1)
                                                                                        for a, b in t.items()}}))


GRID_MIN_SIDE = (0.0, 16.0, 20.0, 24.0)
GRID_PAD = (0.0, 1.0, 2.0)
SMALL_VARIANTS = {f"small_{t:g}_24": {"max_side": 24.0, "threshold": t} for t in (0.3, 0.4, 0.5)}
HEAD_VARIANTS = {"heads_whole_0.5": {"views": "whole", "person_threshold": 0.5},
                 "heads_whole_0.35": {"views": "whole", "person_threshold": 0.35},
                 "heads_tiles_0.5": {"views": "tiles", "person_threshold": 0.5}}


def _fold_of(files: list[str], k: int) -> np.ndarray:
    """Stable fold per image (hash of the file name), independent of the order of the annotations."""
    import hashlib

    return np.array([int(hashlib.sha256(f.encode()).hexdigest()[:8], 16) % k for f in files])


def _deface_mask(img: np.ndarray, dets: np.ndarray) -> np.ndarray:
    from deface.deface import anonymize_frame

    out = img.copy()
    if len(dets):  # deface's CLI defaults: --mask-scale 1.3, --replacewith blur, ellipse on
        anonymize_frame(np.asarray(dets, np.float64), out, mask_scale=1.3, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
    return out


def _score_image(img, out, gt, protected_grown) -> dict:
    from anon_core.evaluation.leak import leak_image, over_masking

    r = leak_image(img, out, gt)
    _, ch_fp, out_fp = over_masking(img, out, protected_grown)
    side = np.minimum(gt.boxes[:, 2] - gt.boxes[:, 0], gt.boxes[:, 3] - gt.boxes[:, 1]) if len(gt.boxes) else \
        np.zeros(0)
    return {"side": side[r.evaluated], "leaked": r.leaked[r.evaluated], "changed": r.changed_outside,
            "outside": r.pixels_outside, "changed_fp": ch_fp, "outside_fp": out_fp,
            "masked": int((np.abs(img.astype(np.int16) - out.astype(np.int16)).max(2) > 10).sum()),
            "pixels": int(img.shape[0] * img.shape[1])}


def _summary(rows: list[dict]) -> dict:
    from anon_core.evaluation.leak import SIZE_BANDS, band_name

    side = np.concatenate([r["side"] for r in rows]) if rows else np.zeros(0)
    leaked = np.concatenate([r["leaked"] for r in rows]).astype(bool) if rows else np.zeros(0, bool)
    tot = {k: sum(r[k] for r in rows) for k in ("changed", "outside", "changed_fp", "outside_fp", "masked", "pixels")}
    out = {"n_evaluated": int(len(side)), "n_leaked": int(leaked.sum()),
           "leak_rate": float(leaked.mean()) if len(side) else None, "by_size": {}}
    for lo, hi in SIZE_BANDS:
        m = (side >= lo) & (side < hi)
        out["by_size"][band_name(lo, hi)] = {"n_evaluated": int(m.sum()), "n_leaked": int(leaked[m].sum()),
                                             "leak_rate": float(leaked[m].mean()) if m.any() else None}
    out["over_masking"] = tot["changed"] / tot["outside"] if tot["outside"] else None
    out["over_masking_fp"] = tot["changed_fp"] / tot["outside_fp"] if tot["outside_fp"] else None
    out["masked_share"] = tot["masked"] / tot["pixels"] if tot["pixels"] else None
    return out


def _spread(values: list) -> dict:
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))} if v else {}


COMBO_T = (0.0, 0.3, 0.4, 0.5)  # small-face rule threshold (0: off), faces < 24 px
COMBO_GROW = ((0.0, 0.0), (16.0, 1.0), (24.0, 1.0), (24.0, 2.0), (32.0, 2.0))


def _pick(summaries: dict[str, dict], names: list[str], slack: float, budget: float | None = None) -> str:
    """Recall first: the variants whose leak is within `slack` of the best; of those, the least over-masking.

    With a budget: only variants whose over_masking_fp (masks on what is no face) stays within it compete.
    """
    if budget is not None:
        names = [n for n in names if summaries[n]["over_masking_fp"] <= budget] or names
    best = min(summaries[n]["leak_rate"] for n in names)
    near = [n for n in names if summaries[n]["leak_rate"] <= best + slack]
    return min(near, key=lambda n: (summaries[n]["over_masking"], n))


def cmd_score(args: argparse.Namespace) -> None:
    from anon_core.config import AnonConfig
    from anon_core.evaluation.groundtruth import GroundTruthImage
    from anon_core.heads import HeadSettings, fit_geometry, heads_without_faces
    from anon_core.masking import Masker, MaskSpec

    t_start = time.perf_counter()
    cache = np.load(args.cache)
    gts = {g.file: g for g in load_jsonl(args.data)}
    files = [str(f) for f in cache["files"]]
    if args.limit:
        files = files[: args.limit]
    thr = float(cache["threshold"]) if args.threshold is None else float(args.threshold)
    base = AnonConfig().masks["face"]
    variants: dict[str, MaskSpec] = {}
    for ms in GRID_MIN_SIDE:
        for pad in GRID_PAD:
            variants[f"grow_{ms:g}_{pad:g}"] = MaskSpec(base.operator, base.shape, base.scale, dict(base.params),
                                                       min_side=ms, pad_px=pad)
    combos: dict[str, tuple[float, MaskSpec]] = {}
    if args.combos:  # the small-face rule x mask growth, every combination on the same detections
        for t in COMBO_T:
            for ms, pad in COMBO_GROW:
                combos[f"combo_{t:g}_{ms:g}_{pad:g}"] = (t, MaskSpec(base.operator, base.shape, base.scale,
                                                                     dict(base.params), min_side=ms, pad_px=pad))
        variants = {}
        if args.only:
            combos = {k: v for k, v in combos.items() if k in args.only.split(",")}
    folds = _fold_of(files, args.folds)
    # head geometry: fitted on GT faces inside detected persons of each fold's training images (faces data only)
    persons_all = [unpack(cache["persons"], cache["persons_off"], i) for i in range(len(files))]
    geo_folds = {}
    if args.kind == "faces":
        for f in range(args.folds):
            tr = [i for i in range(len(files)) if folds[i] != f]
            geo_folds[f] = fit_geometry([gts[files[i]].boxes for i in tr],
                                        [persons_all[i][persons_all[i][:, 5] == 1][:, :4] for i in tr])
        geo_pooled = fit_geometry([gts[files[i]].boxes for i in range(len(files))],
                                  [p[p[:, 5] == 1][:, :4] for p in persons_all])
    else:
        geo_pooled = {k: getattr(HeadSettings(), k) for k in ("centre_x", "top", "width", "height")}
    per_image: dict[str, list] = {}
    for i, name in enumerate(files):
        gt = gts[name]
        img = load_rgb(gt.path)
        fd = unpack(cache["faces"], cache["faces_off"], i)
        faces = Detections(fd[:, :4], fd[:, 4], np.full(len(fd), "face", object))
        faces = faces[faces.scores >= thr] if len(faces) else faces
        if args.kind == "faces":
            face_gt = gt
            protected = np.concatenate([gt.boxes, gt.ignore]).reshape(-1, 4)
        else:  # persons: no face GT; over-masking counts pixels outside every person (and ignore) box
            face_gt = GroundTruthImage(gt.file, gt.width, gt.height, np.zeros((0, 4)), np.zeros((0, 4)))
            protected = np.concatenate([gt.boxes, gt.ignore]).reshape(-1, 4)
        grown = scale_about_centre(protected, 1.3) if len(protected) else protected
        scoring_gt = GroundTruthImage(gt.file, gt.width, gt.height, face_gt.boxes, protected)
        outs = {}
        for vname, spec in variants.items():
            outs[vname] = Masker({"face": spec}).apply(img, faces)[0]
        from anon_core.heads import SmallFaceSettings

        all_faces = Detections(fd[:, :4], fd[:, 4], np.full(len(fd), "face", object))
        for cname, (t, spec) in combos.items():
            sel = faces if t == 0 or not len(fd) else \
                all_faces[(all_faces.scores >= thr) | SmallFaceSettings(24.0, t).promote(all_faces)]
            outs[cname] = Masker({"face": spec}).apply(img, sel)[0]
        if combos:
            for vname, out in outs.items():
                per_image.setdefault(vname, []).append(_score_image(img, out, scoring_gt, grown))
            if (i + 1) % 20 == 0:
                print(f"[score] {i + 1}/{len(files)}", file=sys.stderr, flush=True)
            continue
        pd = persons_all[i]
        chosen = variants[args.heads_mask]
        for hname, hp in HEAD_VARIANTS.items():
            geo = geo_folds.get(int(folds[i]), geo_pooled) if args.kind == "faces" else geo_pooled
            hs = HeadSettings(enabled=True, **hp, **{k: geo[k] for k in ("centre_x", "top", "width", "height")})
            p = pd[pd[:, 5] == (1 if hs.views == "tiles" else 0)]
            persons = Detections(p[:, :4], p[:, 4], np.full(len(p), "person", object))
            heads = heads_without_faces(persons, faces, hs)
            both = Detections.merge([faces, heads])
            outs[hname] = Masker({"face": chosen}).apply(img, both)[0]
            per_image.setdefault(hname + "_n_heads", []).append(len(heads))
        for sname, sp in SMALL_VARIANTS.items():
            sel = all_faces[(all_faces.scores >= thr) | SmallFaceSettings(**sp).promote(all_faces)] if len(fd) \
                else all_faces
            outs[sname] = Masker({"face": chosen}).apply(img, sel)[0]
        outs["deface"] = _deface_mask(img, unpack(cache["deface"], cache["deface_off"], i))
        for vname, out in outs.items():
            per_image.setdefault(vname, []).append(_score_image(img, out, scoring_gt, grown))
        if (i + 1) % 20 == 0:
            print(f"[score] {i + 1}/{len(files)}", file=sys.stderr, flush=True)
    names = [n for n in per_image if not n.endswith("_n_heads")]
    pooled = {n: _summary(per_image[n]) for n in names}
    for h in HEAD_VARIANTS if not combos else ():
        pooled[h]["n_heads_masked"] = int(sum(per_image[h + "_n_heads"]))
    report: dict = {"data": str(Path(args.data).resolve()), "kind": args.kind, "n_images": len(files),
                    "face_threshold": thr, "cache": args.cache, "seconds_per_image_detect": json.loads(str(
                        cache["seconds"])), "heads_mask": args.heads_mask,
                    "head_geometry_pooled": geo_pooled, "head_geometry_folds": geo_folds, "pooled": pooled}
    if args.kind == "faces":
        grid = list(combos or variants)
        shown = {"combo_0_0_0"} if combos else {"grow_0_0", "deface", *HEAD_VARIANTS, *SMALL_VARIANTS}
        cv = []
        for f in range(args.folds):
            tr = [per_image[n] for n in grid]
            train = {n: _summary([r for r, fo in zip(per_image[n], folds) if fo != f]) for n in grid}
            test = {n: _summary([r for r, fo in zip(per_image[n], folds) if fo == f]) for n in names}
            pick = _pick(train, grid, args.slack, args.budget)
            del tr
            cv.append({"fold": f, "n_test_images": int((folds == f).sum()), "picked": pick,
                       "test": {n: {"leak_rate": test[n]["leak_rate"], "leak_10_24": test[n]["by_size"]["10-24"][
                           "leak_rate"], "over_masking": test[n]["over_masking"],
                           "over_masking_fp": test[n]["over_masking_fp"]}
                                for n in sorted({pick, *shown})}})
        picks = [c["picked"] for c in cv]
        sel = [c["test"][c["picked"]] for c in cv]
        report["cv"] = {"folds": cv, "rule": f"lowest train over-masking among grid variants within {args.slack} of "
                                             "the best train leak" + (f", over_masking_fp <= {args.budget}" if
                                                                      args.budget is not None else ""),
                        "picked": picks,
                        "test_of_picked": {k: _spread([s[k] for s in sel]) for k in sel[0]},
                        **({} if combos else {
                            "test_of_deface": {k: _spread([c["test"]["deface"][k] for c in cv]) for k in sel[0]}}),
                        "test_of_no_growth": {k: _spread([c["test"]["combo_0_0_0" if combos else "grow_0_0"][k]
                                                          for c in cv]) for k in sel[0]}}
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["load_average"] = os.getloadavg()
    report["machine"] = platform.processor() or platform.machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    def r4(x):
        return None if x is None else round(x, 4)

    short = {n: {"leak": r4(v["leak_rate"]), "10-24": r4(v["by_size"]["10-24"]["leak_rate"]),
                 "over": r4(v["over_masking"]), "over_fp": r4(v["over_masking_fp"]), "masked": r4(v["masked_share"])}
             for n, v in pooled.items()}
    print(json.dumps({"out": args.out, "pooled": short, "cv_picked": report.get("cv", {}).get("picked")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--data", default="../shared/data/faces")
    d.add_argument("--cache", required=True)
    d.add_argument("--floor", type=float, default=0.2)
    d.add_argument("--limit", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("--data", default="../shared/data/faces")
    s.add_argument("--cache", required=True)
    s.add_argument("--out", default="benchmarks/results/face_coverage.json")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--limit", type=int, default=0)
    s.add_argument("--kind", choices=("faces", "persons"), default="faces")
    s.add_argument("--slack", type=float, default=0.002, help="CV pick: leak within this of the best, then least "
                                                               "over-masking")
    s.add_argument("--threshold", type=float, default=None, help="face threshold (default: the cached detector's)")
    s.add_argument("--only", default="", help="with --combos: only these combinations (comma-separated)")
    s.add_argument("--combos", action="store_true", help="only the small-face rule x growth grid (CV over it)")
    s.add_argument("--budget", type=float, default=None, help="CV pick: over_masking_fp at most this")
    s.add_argument("--heads-mask", default="grow_0_0", help="mask variant the head variants are combined with")
    args = ap.parse_args()
    if args.cmd == "detect":
        cmd_detect(args)
    else:
        cmd_score(args)


if __name__ == "__main__":
    main()
