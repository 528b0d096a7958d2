"""The WebSocket stream's per-frame work in-process (FrameWorker.process: JPEG decode, frame engine, JPEG encode),
no network: where the time of a stream frame goes. detector=realtime, policy=faces, 60 frames per size.

    .venv/bin/python benchmarks/stream_profile.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anon_core.pipeline import Anonymizer  # noqa: E402
from benchmarks.service_bench import frame_720p  # noqa: E402
from jobs.config import load_config  # noqa: E402
from jobs.service.stream import FrameWorker, StreamOptions  # noqa: E402


def main() -> None:
    an = Anonymizer(load_config(["policy=faces", "detector=realtime"]))
    res: dict = {}
    for w, h in ((640, 360), (1280, 720)):
        frames = [frame_720p(w, h, shift=int(8 * np.sin(i / 15))) for i in range(60)]
        wk = FrameWorker(an, StreamOptions(policy="faces"), 8_294_400)
        wk.process(0, frames[0], time.perf_counter())  # warm-up: first frame loads the model
        t = []
        for i, f in enumerate(frames[1:]):
            t0 = time.perf_counter()
            wk.process(i + 1, f, t0)
            t.append((time.perf_counter() - t0) * 1000)
        st = wk.session.stats()
        res[f"{w}x{h}"] = {"frames": len(t), "p50_ms": round(float(np.percentile(t, 50)), 1),
                           "p95_ms": round(float(np.percentile(t, 95)), 1),
                           "engine_ms_per_frame_incl_warmup": {k: round(v / st["frames"], 1)
                                                               for k, v in st["timings_ms"].items()},
                           "adaptive": wk.session.adaptive}
    res["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
