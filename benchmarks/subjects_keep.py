"""`subjects.keep` against bystanders: which rule may leave a face visible? Chosen by cross-validation.

The faces (benchmarks/subjects_faces.py): every face the default video pipeline tracks in the 5 face_video
clips (a track overlapping the labelled box in most of its frames is that clip's identity, every other track is
a bystander: crowds, audiences, studio guests), the WIDER val faces (faces/, other sessions, never tuned on) and
the WIDER train faces (faces_train/, the cohort; no numbers are reported on it).

Reference sets: per identity and time block k (k = 0..4), the 3 frames of block k found as `subjects.keep=[...]`
finds them; the subject's observations in block k +-5 are not scored. Every rule is simulated exactly as
`SubjectSession` applies it, observation by observation along each track (running evidence so far).

Rule families (each family's parameters tuned inside the folds):
  threshold   visible iff the track's running mean distance <= t
  size        + only faces with min side >= s px count as evidence or may be visible (smaller: masked)
  evidence    + at least n evidence observations in the track before it may be visible
  sharpness   size + only faces with sharpness (anon_core.subjects.embedder.sharpness) >= q count / may be visible
  cohort      evidence + the running mean of (distance to refs - distance to the 5th nearest cohort face) <= m
  exclusive   sharpness + one person is in a frame once: of a frame's faces with track evidence, only the one
              whose track is nearest to the references may be visible

Cross-validation: leave one clip out. Fold c tunes on the other 4 clips only (their identities' genuine
observations, their bystanders and labelled people against the other 4 identities' references): see `tune`.
It is scored on clip c: its identity's own observations (genuine), its
bystanders against every identity's references (the same-clip crowd is the hard case), its labelled person
against the others' references, and the WIDER val faces (single photos: the image rule, no track evidence).

    .venv/bin/python benchmarks/subjects_keep.py --cache /tmp/anon-subjects-keep --out results/F.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from anon_core.subjects.embedder import distances  # noqa: E402
from benchmarks.subjects import K, blocks  # noqa: E402
from benchmarks.subjects_faces import load  # noqa: E402

GRID = {"t": np.round(np.arange(0.40, 0.605, 0.01), 2), "s": (0, 24, 32, 40, 48), "n": (1, 2, 3, 5, 8),
        "m": (np.inf, 0.18, 0.16, 0.14, 0.12, 0.10, 0.08), "q": (0, 30, 45, 60, 80, 100), "x": (1,)}
FAMILIES = {"threshold": ("t",), "size": ("t", "s"), "evidence": ("t", "s", "n"), "sharpness": ("t", "s", "q"),
            "cohort": ("t", "s", "n", "m"), "exclusive": ("t", "s", "q", "x")}
COHORT_K = 5
COHORT_MIN_SIDE = 32
CAP = 0.01  # tuning constraint: impostor observations visible, per reference identity
TOL = 0.005  # genuine visible share within which the stricter rule is preferred


def side(boxes: np.ndarray) -> np.ndarray:
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def kth_cohort(emb: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
    """Distance of each face to its k-th nearest cohort face (inf for unusable faces)."""
    out = np.full(len(emb), np.inf, np.float32)
    for i in range(0, len(emb), 512):
        e = emb[i:i + 512]
        d = np.linalg.norm(e[:, None, :] - cohort[None], axis=-1)
        out[i:i + 512] = np.where(np.isfinite(d).all(1), np.partition(d, k - 1, axis=1)[:, k - 1], np.inf)
    return out


class Faces:
    """Observation arrays (video faces in track order) and the reference sets."""

    def __init__(self, data: dict) -> None:
        rows = data["video"]
        order = collections.defaultdict(list)
        for i, r in enumerate(rows):
            order[(r["clip"], r["tid"])].append(i)
        self.tracks = list(order.values())
        idx = np.concatenate(self.tracks)
        rows = [rows[i] for i in idx]
        self.clip = np.array([r["clip"] for r in rows])
        self.frame = np.array([r["frame"] for r in rows])
        self.frame_key = np.unique(np.char.add(np.char.add(self.clip.astype(str), "/"), self.frame.astype(str)),
                                   return_inverse=True)[1]
        self.track = np.concatenate([np.full(len(t), j) for j, t in enumerate(self.tracks)])
        gt = np.array([r["gt"] for r in rows], float)
        self.labelled = np.array([gt[self.track == j].mean() > 0.5 for j in range(len(self.tracks))])[self.track]
        self.side = side(np.array([r["box"] for r in rows]))
        self.sharp = np.array([r["sharp"] for r in rows])
        emb = np.stack([r["emb"] for r in rows])
        cohort = np.stack([f["emb"] for f in data["train"]
                           if np.isfinite(f["emb"]).all() and side(np.array([f["box"]]))[0] >= COHORT_MIN_SIDE])
        self.cohort_n = len(cohort)
        self.dc = kth_cohort(emb, cohort, COHORT_K)
        val = [f for f in data["val"]]
        vemb = np.stack([f["emb"] for f in val])
        self.val_side, self.val_dc = side(np.array([f["box"] for f in val])), kth_cohort(vemb, cohort, COHORT_K)
        self.val_sharp = np.array([f["sharp"] for f in val])
        self.identities = sorted(data["refs"])
        self.nframes = {c: int(self.frame[self.clip == c].max()) + 1 for c in self.identities}
        self.d, self.val_d = {}, {}
        for s in self.identities:
            for k in range(K):
                self.d[s, k] = distances(emb, data["refs"][s][k])
                self.val_d[s, k] = distances(vemb, data["refs"][s][k])
        starts = np.r_[0, np.cumsum([len(t) for t in self.tracks])[:-1]]
        self.start = starts[self.track]
        self._cat: dict = {}  # index of each observation's track's first observation

    def category(self, s: str, k: int) -> np.ndarray:
        if (s, k) not in self._cat:
            self._cat[s, k] = self._category(s, k)
        return self._cat[s, k]

    def _category(self, s: str, k: int) -> np.ndarray:
        """Per observation, against identity s's block-k references: genuine/labelled_other/bystander_* or ''."""
        excl = np.isin(self.frame, blocks(self.nframes[s], k)[1])
        own = self.clip == s
        cat = np.full(len(self.clip), "", object)
        cat[self.labelled & own & ~excl] = "genuine"
        cat[self.labelled & ~own] = "labelled_other"
        cat[~self.labelled & own] = "bystander_same_clip"
        cat[~self.labelled & ~own] = "bystander_other_clips"
        return cat


def track_cumsum(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    c = np.cumsum(x, dtype=np.float64)
    return c - np.r_[0.0, c][start]


def visible(f: Faces, s: str, k: int, p: dict) -> np.ndarray:
    """The rule, observation by observation along each track (SubjectSession's running evidence)."""
    d = f.d[s, k]
    good = (f.side >= p.get("s", 0)) & (f.sharp >= p.get("q", 0))
    ev = np.isfinite(d) & good
    n = track_cumsum(ev, f.start)
    mean = track_cumsum(np.where(ev, d, 0), f.start) / np.maximum(n, 1)
    # a face under the size minimum is masked; one too small to embed at all keeps its track's verdict
    ok = good & (n >= max(1, p.get("n", 1))) & (mean <= p["t"])
    if np.isfinite(p.get("m", np.inf)):
        marg = track_cumsum(np.where(ev, d - np.where(np.isfinite(f.dc), f.dc, 9), 0), f.start) / np.maximum(n, 1)
        ok &= marg <= p["m"]
    if p.get("x"):
        ok &= nearest_in_frame(f.frame_key, np.where(n > 0, mean, np.inf))
    return ok


def nearest_in_frame(key: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per observation: is its (finite) score the smallest of its frame's observations? (ties: the first)."""
    cand = np.flatnonzero(np.isfinite(score))
    order = cand[np.argsort(score[cand], kind="stable")]
    _, first = np.unique(key[order], return_index=True)
    out = np.zeros(len(score), bool)
    out[order[first]] = True
    return out


def visible_still(f: Faces, s: str, k: int, p: dict) -> np.ndarray:
    d = f.val_d[s, k]
    ok = np.isfinite(d) & (f.val_side >= p.get("s", 0)) & (f.val_sharp >= p.get("q", 0)) & (d <= p["t"])
    if np.isfinite(p.get("m", np.inf)):
        ok &= d - f.val_dc <= p["m"]
    return ok


def score(f: Faces, p: dict, ids: list[str], clips: list[str], stills: bool = False) -> dict:
    """Visible shares per category: references of `ids`, observations of `clips`."""
    num: dict = collections.Counter()
    den: dict = collections.Counter()
    per_id = {}
    for s in ids:
        g = [0, 0]
        for k in range(K):
            v, cat = visible(f, s, k, p), f.category(s, k)
            inc = np.isin(f.clip, clips)
            for c in ("genuine", "labelled_other", "bystander_same_clip", "bystander_other_clips"):
                m = inc & (cat == c)
                num[c] += int(v[m].sum())
                den[c] += int(m.sum())
            m = inc & (cat == "genuine")
            g[0] += int(v[m].sum())
            g[1] += int(m.sum())
            if stills:
                vs = visible_still(f, s, k, p)
                num["wider_val"] += int(vs.sum())
                den["wider_val"] += len(vs)
        if g[1]:
            per_id[s] = round(g[0] / g[1], 4)
    out = {c: {"visible": round(num[c] / den[c], 4), "n": den[c]} for c in den if den[c]}
    out["bystanders"] = {"visible": round((num["bystander_same_clip"] + num["bystander_other_clips"]) /
                                          max(1, den["bystander_same_clip"] + den["bystander_other_clips"]), 4),
                         "n": den["bystander_same_clip"] + den["bystander_other_clips"]}
    out["genuine_by_identity"] = per_id
    return out


def candidates(family: str):
    keys = FAMILIES[family]
    defaults = {"s": 0, "n": 1, "m": np.inf, "q": 0, "x": 0}
    for vals in itertools.product(*(GRID[k] for k in keys)):
        yield {**defaults, **dict(zip(keys, (float(v) for v in vals)))}


def tune(f: Faces, family: str, clips: list[str]) -> dict:
    """The strictest rule within TOL of the most genuine observations visible, under the impostor caps.

    The caps hold per reference identity (a rule must be safe for every reference set seen, not on average:
    one identity's references can sit close to many strangers). Among near-best rules the one leaving the fewest
    tuning bystanders visible wins, then the lowest t: a face wrongly left visible is the failure that matters.
    """
    scored = []
    for p in candidates(family):
        per = [score(f, p, [s], clips) for s in clips]
        if any(r["bystanders"]["visible"] > CAP or r.get("labelled_other", {"visible": 0})["visible"] > CAP
               for r in per):
            continue
        g = sum(r["genuine"]["visible"] * r["genuine"]["n"] for r in per) / sum(r["genuine"]["n"] for r in per)
        b = sum(r["bystanders"]["visible"] * r["bystanders"]["n"] for r in per)
        scored.append((g, b, p))
    if not scored:  # nothing meets the caps: the strictest rule of the family
        return {**next(candidates(family)), "t": float(GRID["t"][0]), "infeasible": True}
    top = max(g for g, _, _ in scored)
    near = [(b, p["t"], -p["s"], -p["n"], -p["q"], i) for i, (g, b, p) in enumerate(scored) if g >= top - TOL]
    return scored[min(near)[-1]][2]


def jsonable(p: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in p.items()}


def cross_validate(f: Faces, family: str) -> dict:
    folds = []
    for c in f.identities:
        rest = [x for x in f.identities if x != c]
        p = tune(f, family, rest)
        own = score(f, p, [c], [c])["genuine"]["visible"]
        imp = score(f, p, f.identities, [c], stills=False)  # clip c's faces against every identity's refs
        still = score(f, p, [c], [c], stills=True)["wider_val"]
        folds.append({"held_out": c, "rule": jsonable(p), "subject_visible": own,
                      "bystanders_same_clip_visible": score(f, p, [c], [c])["bystander_same_clip"]["visible"]
                      if "bystander_same_clip" in score(f, p, [c], [c]) else None,
                      "bystanders_visible": imp["bystanders"]["visible"], "bystanders_n": imp["bystanders"]["n"],
                      "labelled_other_visible": score(f, p, [x for x in f.identities if x != c], [c])
                      ["labelled_other"]["visible"], "wider_val_visible": still["visible"]})
        print(json.dumps({family: folds[-1]}), flush=True)
    keys = ("subject_visible", "bystanders_visible", "labelled_other_visible", "wider_val_visible")
    return {"folds": folds, "spread": {k: [min(x[k] for x in folds), max(x[k] for x in folds)] for k in keys},
            "pooled_mean": {k: round(float(np.mean([x[k] for x in folds])), 4) for k in keys}}


def by_identity(f: Faces, p: dict) -> dict:
    """The previous table's view: each identity's block-0 references, its own clip's faces and the others'."""
    out = {}
    for s in f.identities:
        v, cat = visible(f, s, 0, p), f.category(s, 0)
        cats = ("genuine", "bystander_same_clip", "bystander_other_clips", "labelled_other")
        row = {c: {"visible": round(float(v[cat == c].mean()), 4), "n": int((cat == c).sum())}
               for c in cats if (cat == c).any()}
        vs = visible_still(f, s, 0, p)
        row["wider_val"] = {"visible": round(float(vs.mean()), 4), "n": len(vs)}
        out[s] = row
    return out


def track_summary(f: Faces) -> list[dict]:
    """Per track: size, sharpness and median distance to each identity's block-0 references (no embeddings)."""
    out = []
    for j in range(len(f.tracks)):
        m = f.track == j
        med = {s: round(float(np.median(f.d[s, 0][m][np.isfinite(f.d[s, 0][m])])), 3) for s in f.identities}
        out.append({"clip": str(f.clip[m][0]), "labelled": bool(f.labelled[m][0]), "observations": int(m.sum()),
                    "median_side_px": round(float(np.median(f.side[m])), 1),
                    "median_sharpness": round(float(np.median(f.sharp[m])), 1),
                    "median_distance_block0": med, "nearest_block0": min(med, key=med.get)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--face-video", type=Path, default=ROOT.parent / "shared/data/face_video")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/faces")
    ap.add_argument("--faces-train", type=Path, default=ROOT.parent / "shared/data/faces_train")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/anon-subjects-keep"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    f = Faces(load(args.face_video, args.faces, args.faces_train, args.cache))
    res = {"observations": len(f.clip), "tracks": len(f.tracks), "wider_val_faces": len(f.val_side),
           "cohort_faces": f.cohort_n, "cap": CAP, "families": {}}
    for fam in args.families.split(","):
        cv = cross_validate(f, fam)
        final = tune(f, fam, f.identities)
        cv["final_rule_all_clips"] = jsonable(final)
        cv["final_in_sample"] = score(f, final, f.identities, f.identities, stills=True)
        cv["final_by_identity_block0"] = by_identity(f, final)
        res["families"][fam] = cv
    res["previous_default_t0.6_by_identity_block0"] = by_identity(f, {"t": 0.6})
    res["track_summary"] = track_summary(f)
    line = json.dumps(res)
    if args.out:
        args.out.write_text(line + "\n")
    print(json.dumps({k: {"spread": v["spread"], "final": v["final_rule_all_clips"]}
                      for k, v in res["families"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
