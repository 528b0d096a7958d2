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


# Where the faces are, so a test can score every one of them in the anonymized output (tests/test_demo.py):
# the astronaut's face measured by hand on the 512x512 photo (x1, y1, x2, y2; = tests/conftest.py ASTRONAUT_FACE),
# the cameraman's on the 512x512 photo.
ASTRONAUT_FACE = (175, 50, 275, 180)
CAMERAMAN_FACE = (196, 112, 258, 198)
HEAD_CROP = (120, 10, 330, 260)  # x1, y1, x2, y2 of the head-and-shoulders crop the collage and the clip paste


def _face_in_crop(x: float, y: float, fx: float, fy: float) -> list[float]:
    """The astronaut's face box after HEAD_CROP was resized by (fx, fy) and pasted with its corner at (x, y)."""
    a, (cx, cy) = ASTRONAUT_FACE, HEAD_CROP[:2]
    return [x + (a[0] - cx) * fx, y + (a[1] - cy) * fy, x + (a[2] - cx) * fx, y + (a[3] - cy) * fy]


def collage_layout(size: tuple[int, int] = (1280, 720)) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) of each pasted head crop: head widths 240 to 32 px (faces ~114 to ~15 px wide)."""
    w, h = size
    out, x = [], 20
    cw, ch = HEAD_CROP[2] - HEAD_CROP[0], HEAD_CROP[3] - HEAD_CROP[1]
    for side in (240, 170, 120, 84, 60, 44, 32):
        hh = round(side * ch / cw)
        out.append((x, h - hh - 40, side, hh))
        x += side + 30
    return out


def collage_faces(size: tuple[int, int] = (1280, 720)) -> list[list[float]]:
    cw, ch = HEAD_CROP[2] - HEAD_CROP[0], HEAD_CROP[3] - HEAD_CROP[1]
    return [_face_in_crop(x, y, sw / cw, sh / ch) for x, y, sw, sh in collage_layout(size)]


def collage(size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """The astronaut's head and shoulders pasted at several sizes (faces ~15 to ~114 px) over a table scene."""
    import cv2
    from skimage import data

    w, h = size
    bg = np.asarray(Image.fromarray(data.coffee()).resize((w, h))).copy()
    x1, y1, x2, y2 = HEAD_CROP
    head = data.astronaut()[y1:y2, x1:x2]  # face with hair and collar, 210x250
    for x, y, sw, sh in collage_layout(size):
        bg[y : y + sh, x : x + sw] = cv2.resize(head, (sw, sh), interpolation=cv2.INTER_AREA)
    return bg


CLIP_SIZE, CLIP_HEAD, CLIP_Y = (640, 360), (105, 125), 200


def clip_x(i: int, n: int) -> int:
    """Left edge of the head crop in frame i of the demo clip's n frames."""
    return int(20 + (CLIP_SIZE[0] - 145) * i / max(n - 1, 1))


def demo_faces(n_clip_frames: int = 75) -> dict[str, list]:
    """Face boxes per demo image as displayed (orientation applied), and per frame of the clip."""
    cw, ch = HEAD_CROP[2] - HEAD_CROP[0], HEAD_CROP[3] - HEAD_CROP[1]
    fx, fy = CLIP_HEAD[0] / cw, CLIP_HEAD[1] / ch
    return {
        "people/astronaut_phone.jpg": [list(ASTRONAUT_FACE)],  # stored rotated; shown upright (Orientation=6)
        "people/cameraman.png": [list(CAMERAMAN_FACE)],
        "people/crowd_collage.jpg": collage_faces(),
        "people/astronaut_walk.mp4": [[_face_in_crop(clip_x(i, n_clip_frames), CLIP_Y, fx, fy)]
                                      for i in range(n_clip_frames)],
    }


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

    bg = np.asarray(Image.fromarray(data.coffee()).resize(CLIP_SIZE)).copy()
    x1, y1, x2, y2 = HEAD_CROP
    head = cv2.resize(data.astronaut()[y1:y2, x1:x2], CLIP_HEAD, interpolation=cv2.INTER_AREA)
    n = int(seconds * fps)
    with av.open(str(path), "w") as oc:
        v = oc.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
        v.width, v.height, v.pix_fmt = 640, 360, "yuv420p"
        v.codec_context.time_base = Fraction(1, fps)
        a = oc.add_stream("aac", rate=44100)
        a.layout = "mono"
        for i in range(n):
            frame = bg.copy()
            x = clip_x(i, n)
            frame[CLIP_Y : CLIP_Y + CLIP_HEAD[1], x : x + CLIP_HEAD[0]] = head
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
