"""Small faces against their own full-size photo: does enlarging before alignment help the subject matcher?

Every WIDER val face (`faces/`) at least MIN_SIDE px is its own reference (embedded at full size, plain). The
probe is the same photo scaled down (area resampling, then a 0.5 px Gaussian: a camera's optics) so that the
face's shorter side is 24, 32, 40 or 56 px, embedded two ways: as `FaceEmbedder` does (a face under
UPSAMPLE_TO px is cut out and enlarged before the landmarks are placed) and plain (`upsample_to=0`). Genuine:
the probe against its own reference; impostor: against every other face's reference. Reports FNMR and FMR at
`subjects.keep_threshold` and `subjects.threshold`. No face_video frame is used (that is where the change was
found), so this is a check on other people and other cameras.

    .venv/bin/python benchmarks/subjects_small_faces.py --out benchmarks/results/subjects_small_faces.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from anon_core.subjects.embedder import FaceEmbedder  # noqa: E402
from anon_core.subjects.settings import DEFAULT_THRESHOLD, KEEP_THRESHOLD  # noqa: E402

MIN_SIDE = 72
SIDES = (24, 32, 40, 56)


def large_faces(data: Path, limit: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for line in (data / "annotations.jsonl").read_text().splitlines():
        a = json.loads(line)
        for b in a["boxes"]:
            if min(b[2] - b[0], b[3] - b[1]) >= MIN_SIDE:
                out.append((a["file"], np.asarray(b, np.float64)))
    return out[:limit]


def rates(probes: np.ndarray, refs: np.ndarray) -> dict:
    d = np.linalg.norm(probes[:, None] - refs[None], axis=-1)
    ok = np.isfinite(d).all(axis=1)
    rows = np.flatnonzero(ok)
    gen = d[rows, rows]
    imp = d[rows].copy()
    imp[np.arange(len(rows)), rows] = np.inf
    imp = imp[np.isfinite(imp)]
    out = {"probes": int(len(rows)), "genuine_median": round(float(np.median(gen)), 4)}
    for name, t in (("keep_threshold", KEEP_THRESHOLD), ("threshold", DEFAULT_THRESHOLD)):
        out[name] = {"t": t, "fnmr": round(float(np.mean(gen > t)), 4), "fmr": round(float(np.mean(imp <= t)), 4)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/faces")
    ap.add_argument("--limit", type=int, default=250)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    enlarged, plain = FaceEmbedder(), FaceEmbedder(upsample_to=0)
    faces = large_faces(args.faces, args.limit)
    refs, probes = [], {s: {"enlarged": [], "plain": []} for s in SIDES}
    for file, box in faces:
        rgb = cv2.cvtColor(cv2.imread(str(args.faces / file)), cv2.COLOR_BGR2RGB)
        refs.append(plain.embed(rgb, box[None])[0])
        for side in SIDES:
            s = side / min(box[2] - box[0], box[3] - box[1])
            small = cv2.GaussianBlur(cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA), (0, 0), 0.5)
            probes[side]["enlarged"].append(enlarged.embed(small, (box * s)[None])[0])
            probes[side]["plain"].append(plain.embed(small, (box * s)[None])[0])
    R = np.stack(refs)
    res = {"faces": len(faces), "min_side": MIN_SIDE, "upsample_to": enlarged.upsample_to,
           "by_side": {str(s): {k: rates(np.stack(v), R) for k, v in probes[s].items()} for s in SIDES}}
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
