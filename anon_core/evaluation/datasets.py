"""Annotated data for validation: which kind a folder holds, and its ground truth.

Kinds (found from the path):
- box set: `DIR/annotations.jsonl` (the shared JSONL format); the class is given or the folder name
  (faces -> face, plates -> plate, persons -> person).
- COCO: a COCO instances JSON in DIR (or the JSON file itself); images next to it or in `images/`.
- video: MOTChallenge sequences `DIR/<seq>/{img1,gt/gt.txt,seqinfo.ini}` (face_video, tracking), in frame order.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anon_core.evaluation.groundtruth import GroundTruthImage, load_coco, load_jsonl, load_mot

# Folder names of the shared data -> class name (the pipeline's labels).
FOLDER_CLASSES = {"faces": "face", "face_video": "face", "plates": "plate", "persons": "person",
                  "tracking": "person", "pedestrians": "person", "texts": "text"}


@dataclass
class VideoSequence:
    name: str
    fps: float
    frames: list[tuple[int, GroundTruthImage]]  # (frame number, gt) in frame order


@dataclass
class Dataset:
    kind: str  # "boxes" | "coco" | "video"
    root: Path
    classes: list[str]
    images: list[GroundTruthImage] = field(default_factory=list)
    sequences: list[VideoSequence] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.images) + sum(len(s.frames) for s in self.sequences)


def _class_from_name(path: Path) -> str | None:
    name = path.name.lower()
    if name in FOLDER_CLASSES:
        return FOLDER_CLASSES[name]
    return name[:-1] if name.endswith("s") and name[:-1] in FOLDER_CLASSES.values() else None


def _is_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return head.lstrip().startswith("{") and ('"images"' in head or '"annotations"' in head)


def _mot_sequences(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.glob("*/gt/gt.txt") if (p.parent.parent / "img1").is_dir())


def discover(data: str | Path, classes: list[str] | None = None, limit: int | None = None) -> Dataset:
    """Find the dataset kind and load its ground truth (see the module docstring)."""
    root = Path(data).resolve()
    if not root.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    folder = root if root.is_dir() else root.parent
    guessed = _class_from_name(folder)
    wanted = list(classes) if classes else ([guessed] if guessed else None)

    seqs = _mot_sequences(root) if root.is_dir() else []
    if seqs:
        label = (wanted or ["person"])[0]
        # MOT17 distractor classes only make sense for pedestrians; face_video has class 1 = face only
        ignore = (2, 7, 8, 12) if label == "person" else ()
        out = []
        for seq in seqs:
            gt = load_mot(seq / "gt" / "gt.txt", classes=(1,), ignore_classes=ignore, label=label)
            ini = configparser.ConfigParser()
            ini.read(seq / "seqinfo.ini")
            fps = float(ini.get("Sequence", "frameRate", fallback="25"))
            frames = sorted(gt.items())[:limit] if limit else sorted(gt.items())
            for _, g in frames:
                g.file = f"{seq.name}/{Path(g.path or g.file).parent.name}/{g.file}"
            out.append(VideoSequence(seq.name, fps, frames))
        return Dataset("video", root, [label], sequences=out)

    jsonl = root / "annotations.jsonl" if root.is_dir() else root if root.suffix == ".jsonl" else None
    if jsonl is not None and jsonl.exists():
        label = (wanted or [None])[0]
        if label is None:
            raise ValueError(f"cannot tell the class of {root} from its name: pass --classes")
        images = load_jsonl(jsonl, label=label)
        return Dataset("boxes", root, [label], images=images[:limit] if limit else images)

    candidates = [root] if root.is_file() else sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    coco = next((p for p in candidates if p.suffix == ".json" and _is_coco(p)), None)
    if coco is not None:
        base = coco.parent.parent if coco.parent.name == "annotations" else coco.parent
        img_dir = base / "images" if (base / "images").is_dir() else base
        names = wanted or ["person"]
        images = load_coco(coco, img_dir, category_names=names)
        return Dataset("coco", root, names, images=images[:limit] if limit else images)
    raise ValueError(f"{root}: no annotations.jsonl, COCO JSON or MOT sequences (<seq>/gt/gt.txt) found")



def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    # GT is in stored-pixel coordinates, so EXIF orientation is deliberately not applied here
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
