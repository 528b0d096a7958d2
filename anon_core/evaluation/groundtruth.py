"""Ground-truth loaders: the shared JSONL box format, COCO JSON and MOTChallenge gt.txt.

Every loader returns :class:`GroundTruthImage` objects with absolute pixel xyxy boxes whose x2/y2 are exclusive,
the same convention as :class:`anon_core.detections.Detections`.
"""

from __future__ import annotations

import configparser
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anon_core.boxes import clip


def _boxes(value) -> np.ndarray:
    return np.asarray(value if value is not None else [], dtype=np.float64).reshape(-1, 4)


@dataclass
class GroundTruthImage:
    """Annotated boxes of one image (or one video frame).

    boxes: (N, 4) objects that must be found (recall counts them).
    ignore: (M, 4) "don't care" regions: detections on them are neither TP nor FP, missing them is no FN.
    labels: optional (N,) class names of `boxes`; None means single-class data.
    ignore_labels: optional (M,) class names of `ignore`; None means the regions apply to every class.
    track_ids: optional (N,) object ids (video), used for per-track leak runs.
    path: absolute image path when the loader could resolve it.
    extra: any other keys of the source row (plate_text, sequence, frame, ...).
    """

    file: str
    width: int
    height: int
    boxes: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: np.ndarray | None = None
    ignore_labels: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    path: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = _boxes(self.boxes)
        self.ignore = _boxes(self.ignore)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=object).reshape(-1)
            if len(self.labels) != len(self.boxes):
                raise ValueError("labels must have one entry per box")
        if self.ignore_labels is not None:
            self.ignore_labels = np.asarray(self.ignore_labels, dtype=object).reshape(-1)
            if len(self.ignore_labels) != len(self.ignore):
                raise ValueError("ignore_labels must have one entry per ignore region")
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != len(self.boxes):
                raise ValueError("track_ids must have one entry per box")

    def for_class(self, name: str) -> GroundTruthImage:
        """The boxes (and ignore regions) that apply to one class; unlabelled data is returned whole."""
        keep = np.ones(len(self.boxes), bool) if self.labels is None else self.labels == name
        ign = np.ones(len(self.ignore), bool) if self.ignore_labels is None else self.ignore_labels == name
        return GroundTruthImage(
            file=self.file,
            width=self.width,
            height=self.height,
            boxes=self.boxes[keep],
            ignore=self.ignore[ign],
            labels=None if self.labels is None else self.labels[keep],
            ignore_labels=None if self.ignore_labels is None else self.ignore_labels[ign],
            track_ids=None if self.track_ids is None else self.track_ids[keep],
            path=self.path,
            extra=self.extra,
        )


_JSONL_KEYS = {"file", "width", "height", "boxes", "ignore", "labels"}


def load_jsonl(path_or_dir: str | Path, label: str | None = None) -> list[GroundTruthImage]:
    """Read the shared `annotations.jsonl` format (a file, or a folder holding `annotations.jsonl`).

    `file` stays relative as written; `path` is resolved against the JSONL's folder. `label` names the class of
    every box when the rows carry no `labels` key (the shared data is one class per folder).
    """
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / "annotations.jsonl"
    root = p.parent.resolve()
    out: list[GroundTruthImage] = []
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            boxes = _boxes(row.get("boxes"))
            labels = row.get("labels")
            if labels is None and label is not None:
                labels = [label] * len(boxes)
            out.append(
                GroundTruthImage(
                    file=row["file"],
                    width=int(row["width"]),
                    height=int(row["height"]),
                    boxes=boxes,
                    ignore=_boxes(row.get("ignore")),
                    labels=labels,
                    path=str(root / row["file"]),
                    extra={k: v for k, v in row.items() if k not in _JSONL_KEYS},
                )
            )
    return out


def load_coco(
    json_path: str | Path, images_dir: str | Path, category_names: Iterable[str] | None = None
) -> list[GroundTruthImage]:
    """Read COCO instances JSON. bbox x,y,w,h -> xyxy; `iscrowd` annotations become ignore regions.

    category_names: keep only these categories (e.g. ["person"]); None keeps all. Every image in the JSON is
    returned, so images without kept annotations act as negatives.
    """
    with open(json_path, encoding="utf-8") as fh:
        coco = json.load(fh)
    cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
    wanted = None if category_names is None else set(category_names)
    per_image: dict[int, dict[str, list]] = defaultdict(lambda: {"b": [], "l": [], "i": [], "il": []})
    for ann in coco.get("annotations", []):
        name = cats.get(ann["category_id"], str(ann["category_id"]))
        if wanted is not None and name not in wanted:
            continue
        x, y, w, h = ann["bbox"]
        slot = per_image[ann["image_id"]]
        if ann.get("iscrowd", 0):
            slot["i"].append([x, y, x + w, y + h])
            slot["il"].append(name)
        else:
            slot["b"].append([x, y, x + w, y + h])
            slot["l"].append(name)
    root = Path(images_dir).resolve()
    out = []
    for img in coco.get("images", []):
        slot = per_image.get(img["id"], {"b": [], "l": [], "i": [], "il": []})
        w, h = int(img["width"]), int(img["height"])
        out.append(
            GroundTruthImage(
                file=img["file_name"],
                width=w,
                height=h,
                boxes=clip(_boxes(slot["b"]), w, h).astype(np.float64),
                ignore=clip(_boxes(slot["i"]), w, h).astype(np.float64),
                labels=slot["l"],
                ignore_labels=slot["il"],
                path=str(root / img["file_name"]),
                extra={"image_id": img["id"]},
            )
        )
    return out


def _seqinfo(gt_txt: Path) -> dict[str, str]:
    ini = gt_txt.parent.parent / "seqinfo.ini"
    if not ini.exists():
        return {}
    cp = configparser.ConfigParser()
    cp.read(ini)
    return dict(cp["Sequence"]) if cp.has_section("Sequence") else {}


def load_mot(
    gt_txt: str | Path,
    classes: Iterable[int] = (1,),
    ignore_classes: Iterable[int] = (2, 7, 8, 12),
    label: str = "person",
    min_visibility: float = 0.0,
    width: int | None = None,
    height: int | None = None,
) -> dict[int, GroundTruthImage]:
    """Read a MOTChallenge gt.txt (`frame,id,left,top,w,h,flag,class,visibility`) into frame -> GroundTruthImage.

    Rows of `classes` with flag 1 (and visibility >= min_visibility) are boxes; flag-0 rows of those classes and
    rows of `ignore_classes` (MOT17's person-like distractors) are ignore regions; other classes are dropped.
    Coordinates are taken as written (the shared data did the same) and clipped to the image when its size is
    known from the arguments or `seqinfo.ini`. Every frame of the sequence appears, empty ones included.
    """
    p = Path(gt_txt)
    info = _seqinfo(p)
    width = width if width is not None else int(info["imwidth"]) if "imwidth" in info else None
    height = height if height is not None else int(info["imheight"]) if "imheight" in info else None
    ext = info.get("imext", ".jpg")
    img_dir = p.parent.parent / info.get("imdir", "img1")
    keep, ign_cls = set(int(c) for c in classes), set(int(c) for c in ignore_classes)

    rows = np.loadtxt(p, delimiter=",", ndmin=2) if p.stat().st_size else np.zeros((0, 9))
    frames: dict[int, dict[str, list]] = defaultdict(lambda: {"b": [], "t": [], "i": []})
    for r in rows:
        frame, tid, left, top, w, h = int(r[0]), int(r[1]), *r[2:6]
        flag = int(r[6]) if len(r) > 6 else 1
        cls = int(r[7]) if len(r) > 7 else 1
        vis = float(r[8]) if len(r) > 8 else 1.0
        box = [left, top, left + w, top + h]
        slot = frames[frame]
        if cls in keep and flag != 0 and vis >= min_visibility:
            slot["b"].append(box)
            slot["t"].append(tid)
        elif cls in keep or cls in ign_cls:
            slot["i"].append(box)
    n = int(info["seqlength"]) if "seqlength" in info else 0
    all_frames = sorted(set(frames) | set(range(1, n + 1)))
    out = {}
    for f in all_frames:
        slot = frames.get(f, {"b": [], "t": [], "i": []})
        b, i = _boxes(slot["b"]), _boxes(slot["i"])
        if width is not None and height is not None:
            b = clip(b, width, height).astype(np.float64)
            i = clip(i, width, height).astype(np.float64)
        name = f"{f:06d}{ext}"
        out[f] = GroundTruthImage(
            file=name,
            width=width or 0,
            height=height or 0,
            boxes=b,
            ignore=i,
            labels=[label] * len(b),
            track_ids=slot["t"],
            path=str((img_dir / name).resolve()),
            extra={"frame": f},
        )
    return out
