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
    p = root / "people/astronaut_walk.mp4"
    write_demo_clip(p)
    paths.append(p)
    return paths


def write_demo_clip(path: Path, seconds: float = 3.0, fps: int = 25) -> None:
    """The astronaut's head crossing a table scene (640x360 H.264) with a 440 Hz AAC tone: shows tracking,
    timestamps and bit-exact audio in the output."""
    from fractions import Fraction

    import av
    import cv2
    from skimage import data

    bg = np.asarray(Image.fromarray(data.coffee()).resize((640, 360))).copy()
    head = cv2.resize(data.astronaut()[10:260, 120:330], (105, 125), interpolation=cv2.INTER_AREA)
    n = int(seconds * fps)
    with av.open(str(path), "w") as oc:
        v = oc.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
        v.width, v.height, v.pix_fmt = 640, 360, "yuv420p"
        v.codec_context.time_base = Fraction(1, fps)
        a = oc.add_stream("aac", rate=44100)
        a.layout = "mono"
        for i in range(n):
            frame = bg.copy()
            x = int(20 + (640 - 145) * i / max(n - 1, 1))
            frame[200:325, x : x + 105] = head
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            oc.mux(v.encode(vf))
        oc.mux(v.encode(None))
        t = np.arange(int(44100 * seconds)) / 44100
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, len(tone), 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k : k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, k
            oc.mux(a.encode(af))
        oc.mux(a.encode(None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="demo/input")
    args = ap.parse_args()
    for p in build(Path(args.root)):
        print(p)


if __name__ == "__main__":
    main()
