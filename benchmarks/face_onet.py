"""An independent verifier for the face cascade (issue 15): MTCNN's output network (ONet) on each candidate.

The cascade's learned verifier (face_cascade.py `fit`) only re-read the outputs of the two networks that produced
the candidates. ONet (facenet-pytorch 2.6.0 wheel, `data/onet.pt`, MIT) is a third network trained separately
(48x48 face / non-face, on WIDER FACE + CelebA), so its errors need not coincide with theirs.

    python benchmarks/face_cascade.py views --data ../shared/data/faces --views c1,r1,r2       # and faces_train
    python benchmarks/face_cascade.py features --data ../shared/data/faces --set default --look ''  # and train
    pip install --no-deps facenet-pytorch==2.6.0   # not part of make setup: this verifier did not pay
    python benchmarks/face_onet.py

Per candidate of the default views (noisy-OR fused at 0.1): ONet's face probability on the square around the box
(side = the larger side, as MTCNN feeds it) and on 1.3x that square. Verifiers (gradient-boosted trees, the
cascade's settings) are trained on faces_train only; their threshold is chosen by 5-fold CV over
../shared/data/faces at target precision 0.90, exactly as `face_cascade.py fit` does, and compared with the plain
noisy-OR score on the same candidates.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from face_cascade import (  # noqa: E402
    CACHE,
    GBDT,
    Matcher,
    _data_name,
    _image,
    cross_validate,
    load_features,
    matrix,
    per_image,
)

from anon_core.evaluation import load_jsonl  # noqa: E402

DATA = {"dev": str(ROOT.parent / "shared/data/faces"), "train": str(ROOT.parent / "shared/data/faces_train")}


def onet():
    import torch
    from facenet_pytorch.models.mtcnn import ONet

    torch.set_num_threads(2)
    return ONet(pretrained=True).eval()


def squares(xyxy: np.ndarray, grow: float) -> np.ndarray:
    c = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    side = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]) * grow
    return np.concatenate([c - side[:, None] / 2, c + side[:, None] / 2], 1)


def crops48(img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """48x48 RGB crops of the boxes (zero outside the image), normalised as MTCNN does: (x - 127.5) / 128."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), 3, 48, 48), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
        side = max(x1 - x0, y1 - y0, 1)
        canvas = np.zeros((side, side, 3), np.uint8)
        a, b, c, d = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if c > a and d > b:
            canvas[b - y0:d - y0, a - x0:c - x0] = img[b:d, a:c]
        out[k] = ((cv2.resize(canvas, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32) - 127.5)
                  / 128.0).transpose(2, 0, 1)
    return out


def onet_columns(data: str, feat: dict) -> list[dict]:
    import torch

    f = CACHE / "features" / "default" / f"{_data_name(data)}.onet.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    net, gts, cols, t0 = onet(), load_jsonl(data), [], time.perf_counter()
    for gt, r in zip(gts, feat["rows"]):
        img, xyxy, c = _image(gt.path), np.asarray(r["xyxy"], np.float64), {}
        for name, grow in (("onet", 1.0), ("onet13", 1.3)):
            if not len(xyxy):
                c[name] = np.zeros(0)
                continue
            with torch.no_grad():
                prob = net(torch.from_numpy(crops48(img, squares(xyxy, grow))))[2][:, 1].numpy()
            c[name] = prob.astype(np.float64)
        cols.append(c)
    print(f"ONet on {_data_name(data)}: {(time.perf_counter() - t0) / max(len(gts), 1) * 1000:.0f} ms/image",
          flush=True)
    f.write_bytes(pickle.dumps(cols))
    return cols


def main() -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    feats = {k: load_features("default", v) for k, v in DATA.items()}
    for k, v in DATA.items():
        for r, c in zip(feats[k]["rows"], onet_columns(v, feats[k])):
            r["cols"].update(c)
    gts = load_jsonl(DATA["dev"])
    matcher = Matcher(feats["dev"], gts)
    x, y, keep = matrix(feats["dev"], ["onet"])
    pos, neg = x[keep & (y == 1), 0], x[keep & (y == 0), 0]
    report = {"gbdt": GBDT, "onet_on_dev": {"faces_median": float(np.median(pos)), "non_faces_median":
                                           float(np.median(neg)), "faces_over_0.5": float((pos > 0.5).mean()),
                                           "non_faces_over_0.5": float((neg > 0.5).mean())}, "variants": {}}
    print(json.dumps(report["onet_on_dev"]))
    variants = {"noisy_or (stage 1 only)": None, "onet alone": ["onet"], "fused+onet": ["fused", "onet"],
                "fused+onet+onet13": ["fused", "onet", "onet13"],
                "fused+onet+onet13+size": ["fused", "onet", "onet13", "log_side"]}
    for name, names in variants.items():
        if names is None:
            scores = [r["cols"]["fused"] for r in feats["dev"]["rows"]]
        else:
            xt, yt, kt = matrix(feats["train"], names)
            model = GradientBoostingClassifier(**GBDT).fit(xt[kt], yt[kt])
            scores = per_image(feats["dev"], model.predict_proba(matrix(feats["dev"], names)[0])[:, 1])
        for target in (0.83, 0.90):
            cv = cross_validate(matcher.match(scores), 5, target)
            report["variants"][f"{name} @ {target}"] = cv
            s = cv["summary"]["held_out"]
            print(f"{name:28s} P>={target}: held-out recall {s['recall']['mean']:.4f} ± {s['recall']['std']:.3f} "
                  f"precision {s['precision']['mean']:.4f} ± {s['precision']['std']:.3f}  AP {cv['all']['ap50']:.4f}"
                  f"  10-24 px {cv['all']['recall_10_24']}", flush=True)
    (ROOT / "benchmarks/results/face_onet.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
