"""The faces the subject-matching benchmarks score, embedded once and cached (outside the repository).

* `video_observations`: every face the default video pipeline tracks in the face_video clips, in the order the
  masker sees them (clip, frame, track id, box, whether it overlaps the labelled box, embedding, sharpness).
* `clip_references`: per identity and time block k, the embeddings of the 3 reference frames of block k
  (benchmarks/subjects.py `blocks`), found the way `subjects.keep=[...]` finds them (the detector's largest face).
* `still_faces`: ground-truth faces of a WIDER split (faces/ = val, faces_train/ = train) with min side >= 16 px.

Embeddings are written only to the cache file given (a temp folder), never to benchmarks/results.
"""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.media.probe import MediaType  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402
from anon_core.subjects.embedder import FaceEmbedder, sharpness  # noqa: E402
from anon_core.subjects.filter import load_references  # noqa: E402
from anon_core.video import anonymize_video  # noqa: E402
from benchmarks.subjects import Cache, K, blocks  # noqa: E402
from benchmarks.video_leak import face_video_clips  # noqa: E402
from jobs.config import load_config  # noqa: E402

MIN_STILL = 16


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    i = max(0, x2 - x1) * max(0, y2 - y1)
    return i / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i, 1e-9)


def video_observations(data: Path, cache: Cache) -> tuple[list[dict], dict]:
    emb = FaceEmbedder()
    rows: list[dict] = []
    refs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = face_video_clips(data, work, 10_000)
        an = Anonymizer(load_config(["policy=faces"]))
        cache.wrap_detect(an)
        for path, _ in clips:
            jpgs = sorted((data / path.stem / "img1").glob("*.jpg"))
            refs[path.stem] = [load_references([str(jpgs[i]) for i in blocks(len(jpgs), k)[0]],
                                               lambda rgb: an.detect([rgb])[0], emb) for k in range(K)]
        real = an.mask
        for path, gt in clips:
            def spy(frame, dets, ctx=None, index=0, _gt=gt, _clip=path.stem):
                f = dets.labels.astype(str) == "face"
                if f.any() and dets.track_ids is not None:
                    boxes, tids = dets.xyxy[f], dets.track_ids[f]
                    g = _gt[index][0] if index < len(_gt) else np.zeros((0, 4))
                    for b, t, v in zip(boxes, tids, emb.embed(frame, boxes)):
                        rows.append({"clip": _clip, "frame": int(index), "tid": int(t), "box": [float(x) for x in b],
                                     "gt": any(iou(b, gb) >= 0.3 for gb in g), "emb": v,
                                     "sharp": sharpness(frame, b)})
                return real(frame, dets, ctx, index)

            an.mask = spy
            anonymize_video(an, str(path), str(work / "o.mp4"), MediaType("video", "mp4"), AuditRecord())
            print(f"{path.stem}: {sum(r['clip'] == path.stem for r in rows)} observations", flush=True)
    return rows, refs


def still_faces(data: Path) -> list[dict]:
    emb = FaceEmbedder()
    out = []
    for line in (data / "annotations.jsonl").read_text().splitlines():
        a = json.loads(line)
        boxes = np.asarray(a["boxes"], np.float64).reshape(-1, 4)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[side >= MIN_STILL]
        if not len(boxes):
            continue
        rgb = cv2.cvtColor(cv2.imread(str(data / a["file"])), cv2.COLOR_BGR2RGB)
        for b, v in zip(boxes, emb.embed(rgb, boxes)):
            out.append({"file": a["file"], "box": [float(x) for x in b], "emb": v, "sharp": sharpness(rgb, b)})
    return out


def load(face_video: Path, wider_val: Path, wider_train: Path, cache_dir: Path) -> dict:
    """{"video": rows, "refs": {identity: [R_k]}, "val": faces, "train": faces}, computed once per cache dir."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    f = cache_dir / "faces.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    cache = Cache(cache_dir / "cache.pkl")
    cache.wrap_embed()
    video, refs = video_observations(face_video, cache)
    cache.save()
    out = {"video": video, "refs": refs, "val": still_faces(wider_val), "train": still_faces(wider_train)}
    f.write_bytes(pickle.dumps(out))
    return out
