"""Small synthetic clips for video tests: a real face photo moving over a textured background + a sine tone."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np
from skimage import data

VIDEO_CODEC = {"mp4": "libx264", "mov": "libx264", "mkv": "libx264", "webm": "libvpx-vp9"}
AUDIO_CODEC = {"mp4": "aac", "mov": "aac", "mkv": "aac", "webm": "libopus"}
MUXER = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm"}


@dataclass
class Clip:
    path: str
    boxes: list[np.ndarray]  # per frame, (1, 4) face box in display-orientation pixels
    pts: list[int]
    time_base: Fraction
    size: tuple[int, int]
    extra: dict = field(default_factory=dict)


def face_patch(side: int) -> np.ndarray:
    """The astronaut's face (skimage sample image), resized to side x side."""
    face = data.astronaut()[20:200, 150:330]
    return cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)


def background(width: int, height: int) -> np.ndarray:
    """Smooth but textured background: gradients plus a coarse checkerboard (compresses well)."""
    y, x = np.mgrid[0:height, 0:width]
    bg = np.stack([
        90 + 60 * np.sin(x / 37.0),
        110 + 50 * np.cos(y / 23.0),
        120 + 40 * np.sin((x + y) / 51.0),
    ], axis=-1)
    bg += 25 * (((x // 32) + (y // 32)) % 2)[..., None]
    return np.clip(bg, 0, 255).astype(np.uint8)


def make_clip(
    path: str,
    fmt: str = "mp4",
    n_frames: int = 72,
    size: tuple[int, int] = (320, 240),
    fps: int = 24,
    face: int = 80,
    audio: bool = True,
    vfr: bool = False,
    rotation: int = 0,
    data_stream: bool = False,
    subtitles: bool = False,
    tags: bool = True,
) -> Clip:
    """Write a clip with the face moving left to right; returns the known boxes and pts.

    size and boxes are in display orientation; with a rotation the stored frames are turned the
    other way (as a phone does), so that a player shows the face upright.
    """
    w, h = size
    k = (rotation // 90) % 4
    bg = background(w, h)
    patch = face_patch(face)
    oc = av.open(path, mode="w", format=MUXER[fmt])
    vs = oc.add_stream(VIDEO_CODEC[fmt], rate=fps, options={"crf": "18"} if fmt != "webm" else
                       {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"})
    vs.width, vs.height = (h, w) if k % 2 else (w, h)
    vs.pix_fmt = "yuv420p"
    tb = Fraction(1, fps * 10) if vfr else Fraction(1, fps)
    vs.codec_context.time_base = tb
    if rotation:
        vs.set_display_rotation(rotation)
    aus = None
    if audio:
        aus = oc.add_stream(AUDIO_CODEC[fmt], rate=48000)
        aus.layout = "mono"
    ds = sub = None
    if data_stream:
        ds = oc.add_mux_stream("bin_data")  # mp4/mov: written as a GoPro GPMF ("gpmd") track
    if subtitles:
        sub = oc.add_mux_stream("subrip" if fmt in ("mkv", "webm") else "mov_text")
    if tags:
        oc.metadata["title"] = "secret title"
        oc.metadata["creation_time"] = "2021-05-04T10:00:00Z"
        if fmt in ("mp4", "mov"):
            oc.metadata["location"] = "+48.8584+002.2945/"
    oc.start_encoding()

    boxes, pts_list = [], []
    t = 0
    for i in range(n_frames):
        img = bg.copy()
        x = int(round(10 + (w - face - 20) * i / max(n_frames - 1, 1)))
        y = (h - face) // 2
        img[y:y + face, x:x + face] = patch
        boxes.append(np.array([[x, y, x + face, y + face]], np.float32))
        stored = np.ascontiguousarray(np.rot90(img, -k)) if k else img
        frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
        frame.pts = t
        frame.time_base = tb
        pts_list.append(t)
        for p in vs.encode(frame):
            oc.mux(p)
        # VFR: alternate 1/fps and ~2.5/fps frame spacing
        t += (10 if i % 2 == 0 else 25) if vfr else 1
        if ds is not None and i % 6 == 0:
            pk = av.Packet(b"GPMF\x00\x01" + bytes([i % 256]) * 16)
            pk.stream, pk.time_base, pk.pts, pk.dts, pk.duration = ds, tb, pts_list[-1], pts_list[-1], 1
            oc.mux(pk)
    for p in vs.encode(None):
        oc.mux(p)
    if aus is not None:
        duration = float(t * tb)
        sr = 48000
        n = int(duration * sr)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)
        fsize = aus.codec_context.frame_size or 1024
        for k in range(0, n, fsize):
            chunk = tone[k:k + fsize]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, k, Fraction(1, sr)
            for p in aus.encode(af):
                oc.mux(p)
        for p in aus.encode(None):
            oc.mux(p)
    if sub is not None:
        text = b"Alice Example" if fmt in ("mkv", "webm") else b"\x00\x0dAlice Example"
        pk = av.Packet(text)
        pk.stream, pk.time_base, pk.pts, pk.dts, pk.duration = sub, Fraction(1, 1000), 0, 0, 500
        oc.mux(pk)
    oc.close()
    return Clip(path, boxes, pts_list, tb, size)


def read_video(path: str, display: bool = True) -> tuple[list[np.ndarray], list[float], int]:
    """Decoded RGB frames (display orientation unless display=False), times in seconds, first frame's rotation."""
    frames, times, rotation = [], [], 0
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == 0:
                rotation = f.rotation
            rgb = f.to_ndarray(format="rgb24")
            k = (round(rotation / 90)) % 4
            frames.append(np.ascontiguousarray(np.rot90(rgb, k)) if display and k else rgb)
            times.append(float(f.pts * f.time_base))
    return frames, times, rotation


def packet_bytes(path: str, kind: str = "audio") -> list[bytes]:
    with av.open(path) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [bytes(p) for p in c.demux(streams[0]) if p.size]


def stream_kinds(path: str) -> list[str]:
    with av.open(path) as c:
        return [s.type for s in c.streams]


def duration_s(path: str) -> float:
    with av.open(path) as c:
        v = c.streams.video[0]
        last = None
        for p in c.demux(v):
            if p.pts is not None:
                end = (p.pts + (p.duration or 0)) * p.time_base
                last = end if last is None else max(last, end)
        start = v.start_time * v.time_base if v.start_time is not None else 0
        return float(last - start)


def run_video(an, src: str, fmt: str, tmp_path):
    """Anonymize one clip into tmp_path/out.<fmt>; returns (output path, audit record)."""
    from anon_core.audit import AuditRecord
    from anon_core.media.probe import MediaType
    from anon_core.video import anonymize_video

    out = str(tmp_path / f"out.{fmt}")
    rec = AuditRecord()
    anonymize_video(an, src, out, MediaType("video", fmt), rec)
    return out, rec
