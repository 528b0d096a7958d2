"""Build a small demo archive from photos shipped inside installed packages (scikit-image).

Real faces only come from package data: the astronaut and cameraman photos and scikit-image's
LFW subset (public face crops), arranged into a crowd-like collage. One JPEG carries EXIF with
GPS and an orientation flag, so the metadata policy and orientation handling are visible.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image


def _exif_with_gps(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "DemoCam"  # Make
    exif[0x0131] = "anon demo"  # Software
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 18.0)})
    return exif.tobytes()


def collage(size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """The astronaut's head and shoulders pasted at several sizes (faces ~12 to ~100 px) over a table scene."""
    import cv2
    from skimage import data

    w, h = size
    bg = np.asarray(Image.fromarray(data.coffee()).resize((w, h))).copy()
    head = data.astronaut()[10:260, 120:330]  # face with hair and collar, 210x250
    x = 20
    for side in (240, 170, 120, 84, 60, 44, 32):
        crop = cv2.resize(head, (side, round(side * 250 / 210)), interpolation=cv2.INTER_AREA)
        y = h - crop.shape[0] - 40
        bg[y : y + crop.shape[0], x : x + side] = crop
        x += side + 30
    return bg


def build(root: Path) -> list[Path]:
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    (root / "people").mkdir(exist_ok=True)
    (root / "scenes").mkdir(exist_ok=True)
    paths = []
    # Stored rotated 90 degrees with Orientation=6 ("rotate 90 CW to display"), like a phone photo.
    astro = Image.fromarray(data.astronaut()).transpose(Image.Transpose.ROTATE_90)
    p = root / "people/astronaut_phone.jpg"
    astro.save(p, quality=92, exif=_exif_with_gps(6))
    paths.append(p)
    p = root / "people/cameraman.png"
    Image.fromarray(data.camera()).save(p)
    paths.append(p)
    p = root / "people/crowd_collage.jpg"
    Image.fromarray(collage()).save(p, quality=90, exif=_exif_with_gps(1))
    paths.append(p)
    p = root / "scenes/coffee.png"
    Image.fromarray(data.coffee()).save(p)
    paths.append(p)
    p = root / "scenes/broken_upload.jpg"  # truncated on purpose: shows a failed audit row, no output
    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    paths.append(p)
    try:
        from anon_core.video.demo import write_demo_clip

        p = root / "people/astronaut_walk.mp4"
        write_demo_clip(p)
        paths.append(p)
    except ImportError:
        pass
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="demo/input")
    args = ap.parse_args()
    for p in build(Path(args.root)):
        print(p)


if __name__ == "__main__":
    main()
