"""Precision of what gets masked under the small-face rule (small_faces.*), from face_coverage's detection cache.

The rule masks face candidates under the detector's threshold when they are small; it does not change the
detector's own precision/recall at its threshold (what `anon validate` reports), but it adds masks on things that
are no face. This counts them: masked detections matched to a GT face (IoU >= 0.5) vs not (ignore regions excluded).

    python benchmarks/small_faces_precision.py --data ../shared/data/faces --cache /tmp/cov/faces.npz \
        --out benchmarks/results/small_faces_precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_core.detections import Detections  # noqa: E402
from anon_core.evaluation import load_jsonl, match_image  # noqa: E402
from anon_core.heads import SmallFaceSettings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/faces")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", default="benchmarks/results/small_faces_precision.json")
    args = ap.parse_args()
    c = np.load(args.cache)
    gts = {g.file: g for g in load_jsonl(args.data)}
    files = [str(f) for f in c["files"]]
    thr = float(c["threshold"])
    report = {"threshold": thr, "n_images": len(files), "rows": {}}
    for t in (0.0, 0.3, 0.4, 0.5):
        rule = SmallFaceSettings(24.0 if t else 0.0, t or 0.4)
        tp = fp = promoted_tp = promoted_fp = 0
        for i, f in enumerate(files):
            d = c["faces"][c["faces_off"][i]:c["faces_off"][i + 1]]
            det = Detections(d[:, :4], d[:, 4], np.full(len(d), "face", object))
            prom = rule.promote(det) & (det.scores < thr)
            masked = (det.scores >= thr) | prom
            g = gts[f]
            m = match_image(g.boxes, det.xyxy[masked], det.scores[masked], g.ignore, 0.5, "iou")
            tp, fp = tp + int(m.tp.sum()), fp + int(m.fp.sum())
            p = prom[masked]
            promoted_tp, promoted_fp = promoted_tp + int((m.tp & p).sum()), promoted_fp + int((m.fp & p).sum())
        report["rows"][f"small_{t:g}_24" if t else "off"] = {
            "masked_tp": tp, "masked_fp": fp, "masked_precision": tp / max(tp + fp, 1),
            "fp_per_image": fp / len(files), "promoted_tp": promoted_tp, "promoted_fp": promoted_fp}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["rows"]))


if __name__ == "__main__":
    main()
