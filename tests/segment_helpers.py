"""Clips with regular keyframes (so they can be segmented), a face moving across every cut, and audio."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from tests.video_helpers import background, face_patch


def make_gop_clip(path: str, seconds: float, fps: int = 24, size: tuple[int, int] = (320, 240), face: int = 60,
                  gop_s: float = 2.0, audio: bool = True, rotation: int = 0, crf: int = 23,
                  preset: str = "veryfast", still: np.ndarray | None = None) -> list[np.ndarray]:
    """H.264 (B-frames, a keyframe every gop_s) + AAC tone; the face sweeps left to right and back every
    4 s, so it crosses any segment boundary. Returns the per-frame face boxes (display orientation)."""
    w, h = size
    k = (rotation // 90) % 4
    bg = background(w, h) if still is None else still
    patch = face_patch(face)
    n = int(round(seconds * fps))
    boxes = []
    with av.open(path, mode="w") as oc:
        vs = oc.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": preset,
                                                         "x264-params": f"keyint={int(gop_s * fps)}:scenecut=0"})
        vs.width, vs.height = (h, w) if k % 2 else (w, h)
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, fps)
        if rotation:
            vs.set_display_rotation(rotation)
        aus = oc.add_stream("aac", rate=48000) if audio else None
        if aus is not None:
            aus.layout = "mono"
        sr, apos = 48000, 0
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
        period = 4 * fps
        for i in range(n):
            img = bg.copy()
            phase = (i % period) / period
            frac = 2 * phase if phase < 0.5 else 2 - 2 * phase
            x = int(round(10 + (w - face - 20) * frac))
            y = (h - face) // 2
            img[y:y + face, x:x + face] = patch
            boxes.append(np.array([x, y, x + face, y + face]))
            stored = np.ascontiguousarray(np.rot90(img, -k)) if k else img
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                oc.mux(p)
            if aus is not None:  # audio up to this frame's end, interleaved as a camera writes it
                fs = aus.codec_context.frame_size or 1024
                while apos < (i + 1) * sr // fps:
                    chunk = tone[(apos % sr):(apos % sr) + fs]
                    if len(chunk) < fs:
                        chunk = np.concatenate([chunk, tone[:fs - len(chunk)]])
                    af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                    af.sample_rate, af.pts, af.time_base = sr, apos, Fraction(1, sr)
                    for p in aus.encode(af):
                        oc.mux(p)
                    apos += fs
        for p in vs.encode(None):
            oc.mux(p)
        if aus is not None:
            for p in aus.encode(None):
                oc.mux(p)
    return boxes
