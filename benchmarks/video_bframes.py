"""x264 veryfast CRF 20 with and without B-frames on real clips: bytes and PSNR against the decoded input.

Why GOP copy's re-encoded runs keep B-frames (anon_core/video/gop.py).

    .venv/bin/python benchmarks/video_bframes.py ../shared/data/video/clips/{sihanwang_test.mp4,asl_again.mkv}
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import av
import numpy as np


def frames(path: str, n: int = 150) -> list[np.ndarray]:
    out = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) >= n:
                break
    return out


def encode(fr: list[np.ndarray], params: str) -> tuple[int, float]:
    ctx = av.CodecContext.create("libx264", "w")
    h, w = fr[0].shape[:2]
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w - w % 2, h - h % 2, "yuv420p", Fraction(1, 25)
    ctx.options = {"preset": "veryfast", "crf": "20", "x264-params": params}
    packets = []
    for i, f in enumerate(fr):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:ctx.height, :ctx.width]), format="rgb24")
        vf = vf.reformat(format="yuv420p")
        vf.pts = i
        packets += ctx.encode(vf)
    packets += ctx.encode(None)
    dec = av.CodecContext.create("h264", "r")
    dec.extradata = ctx.extradata
    out = []
    for p in [*packets, None]:
        out += [x.to_ndarray(format="rgb24") for x in dec.decode(p)]
    mse = np.mean([np.mean((a[:ctx.height, :ctx.width].astype(float) - b.astype(float)) ** 2)
                   for a, b in zip(fr, out)])
    return sum(p.size for p in packets), round(float(10 * np.log10(255**2 / mse)), 2)


def main() -> None:
    res = {}
    for path in sys.argv[1:]:
        fr = frames(path)
        b3, b0 = encode(fr, "bframes=3"), encode(fr, "bframes=0")
        res[path.split("/")[-1]] = {"frames": len(fr), "bframes3_bytes": b3[0], "bframes3_psnr": b3[1],
                                    "bframes0_bytes": b0[0], "bframes0_psnr": b0[1],
                                    "size_ratio_b0_vs_b3": round(b0[0] / b3[0], 3)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
