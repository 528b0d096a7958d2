"""Which face masks defeat a recogniser? Rank-1 re-identification on ../shared/data/faces per mask setting.

Every annotated face (>= 10 px) is masked on its ground-truth box (detection aside: this measures the
mask itself), the image is JPEG-encoded as anon publishes it, and anon_core.evaluation.reid matches
each masked face against the gallery of all original faces (dlib ResNet). `unmasked` and `fill` are
the controls (~100 % and chance).

    .venv/bin/python benchmarks/reid_masks.py [--limit 206]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anon_core.evaluation.groundtruth import load_jsonl  # noqa: E402
from anon_core.evaluation.reid import _gt_masker, jpeg_roundtrip, run_attack  # noqa: E402
from anon_core.masking.apply import MaskSpec  # noqa: E402

SETTINGS = {
    "blur strength 0.05": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.05}),
    "blur strength 0.1": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.1}),
    "blur strength 0.25 (default)": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.25}),
    "blur strength 0.5": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.5}),
    "pixelate 16 blocks": MaskSpec("pixelate", "ellipse", 1.3, {"blocks": 16}),
    "pixelate 8 blocks (mask=pixelate)": MaskSpec("pixelate", "ellipse", 1.3, {"blocks": 8}),
    "fill (control)": MaskSpec("fill", "box", 1.0, {"color": [0, 0, 0]}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/faces"))
    ap.add_argument("--limit", type=int, default=None, help="first N images")
    args = ap.parse_args()
    data = Path(args.data)
    images = load_jsonl(data / "annotations.jsonl", label="face")[: args.limit]
    maskers = {k: _gt_masker(v) for k, v in SETTINGS.items()}

    def items():
        for gt in images:
            rgb = np.asarray(Image.open(gt.path or data / gt.file).convert("RGB"))
            b = gt.boxes
            variants = {"unmasked (control)": jpeg_roundtrip}
            variants.update({k: (lambda x, m=m, b=b: jpeg_roundtrip(m(x, b))) for k, m in maskers.items()})
            yield rgb, b, variants

    t0 = time.time()
    res = run_attack(items())
    res["images"] = len(images)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
