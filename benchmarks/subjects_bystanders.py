"""subjects.keep's risk: bystanders. face_video labels one person per clip, but its clips show other people too.

Every face the default pipeline tracks in the 5 clips is embedded (dlib ResNet); a track overlapping the labelled
box (IoU >= 0.3) in most of its frames is the labelled person, every other track is a bystander. For each
identity's references (3 frames of block 0, as benchmarks/subjects.py) the running track-mean distance (the rule
SubjectSession uses) is taken at every observation: the share <= threshold is how often `subjects.keep` would leave
that face visible (the subject: wanted; a bystander: a privacy failure).

    .venv/bin/python benchmarks/subjects_bystanders.py [--face-video ../shared/data/face_video] [--out F.json]
"""
import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from anon_core.audit import AuditRecord  # noqa: E402
from anon_core.media.probe import MediaType  # noqa: E402
from anon_core.pipeline import Anonymizer  # noqa: E402
from anon_core.subjects.embedder import FaceEmbedder, distances  # noqa: E402
from anon_core.video import anonymize_video  # noqa: E402
from benchmarks.subjects import blocks  # noqa: E402
from benchmarks.video_leak import face_video_clips  # noqa: E402
from jobs.config import load_config  # noqa: E402

THRESHOLDS = (0.45, 0.5, 0.55, 0.6)


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    i = max(0, x2 - x1) * max(0, y2 - y1)
    return i / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i, 1e-9)


def collect(data: Path) -> list[dict]:
    """Every tracked face the pipeline masks, embedded, with its distance to every identity's references."""
    emb = FaceEmbedder()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = face_video_clips(data, work, 10_000)
        refs = {}
        for path, gt in clips:
            jpgs = sorted((data / path.stem / "img1").glob("*.jpg"))
            rs = [emb.embed(np.asarray(Image.open(jpgs[i]).convert("RGB")),
                            np.asarray(gt[i][0], np.float64).reshape(-1, 4)[:1]) for i in blocks(len(jpgs), 0)[0]]
            refs[path.stem] = np.concatenate(rs)
        an = Anonymizer(load_config(["policy=faces"]))
        real = an.mask
        for path, gt in clips:
            def spy(frame, dets, ctx=None, index=0, _gt=gt, _clip=path.stem):
                f = dets.labels.astype(str) == "face"
                if f.any() and dets.track_ids is not None:
                    boxes, tids = dets.xyxy[f], dets.track_ids[f]
                    g = np.asarray(_gt[index][0], np.float64).reshape(-1, 4) if index < len(_gt) else np.zeros((0, 4))
                    for b, t, v in zip(boxes, tids, emb.embed(frame, boxes)):
                        rows.append({"clip": _clip, "frame": int(index), "tid": int(t),
                                     "gt": any(iou(b, gb) >= 0.3 for gb in g),
                                     "d": {s: float(distances(v[None], r)[0]) for s, r in refs.items()}})
                return real(frame, dets, ctx, index)

            an.mask = spy
            anonymize_video(an, str(path), str(work / "o.mp4"), MediaType("video", "mp4"), AuditRecord())
    return rows


def summarise(rows: list[dict]) -> dict:
    tracks = collections.defaultdict(list)
    for r in rows:
        tracks[(r["clip"], r["tid"])].append(r)
    out = {"observations": len(rows), "tracks": len(tracks), "identities": {}}
    for s in sorted(rows[0]["d"]) if rows else []:
        own, same, other = [], [], []
        for (clip, _), obs in tracks.items():
            labelled = np.mean([x["gt"] for x in obs]) > 0.5
            ds = [x["d"][s] for x in obs if np.isfinite(x["d"][s])]
            run = list(np.cumsum(ds) / np.arange(1, len(ds) + 1)) if ds else []
            if labelled and clip == s:
                own += run
            elif not labelled:
                (same if clip == s else other).extend(run)
        res = {"n": {"subject": len(own), "bystanders_same_clip": len(same), "bystanders_other_clips": len(other)}}
        for t in THRESHOLDS:
            res[str(t)] = {k: (round(float(np.mean(np.asarray(v) <= t)), 4) if v else None)
                           for k, v in (("subject_visible", own), ("bystanders_same_clip_visible", same),
                                        ("bystanders_other_clips_visible", other))}
        out["identities"][s] = res
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--face-video", type=Path, default=ROOT.parent / "shared/data/face_video")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    res = summarise(collect(args.face_video))
    line = json.dumps(res)
    if args.out:
        args.out.write_text(line + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
