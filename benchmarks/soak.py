"""Soak test of `anon serve`: mixed image, video and WebSocket traffic at several concurrency levels on loopback.

Starts the real service (`anon serve`, uvicorn) as a child process with its own temp root, drives it from
client threads, and checks, for every response, that the face in the test media did not survive: the known
face region must differ from the original, and a second face detector (CenterFace, not the service's
RetinaFace) must find no face there. Samples the server's RSS once a second. Fails (exit 1, `ok: false`) on any
response other than 200, any face that survives, RSS growth past the bound, or a temp file left behind.

    .venv/bin/python benchmarks/soak.py --profile short            # ~45 s, what CI runs (tests/reliability)
    .venv/bin/python benchmarks/soak.py --profile long --out benchmarks/results/soak_long.json   # 10 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.service.child import start_serve  # noqa: E402 (after the path insert)

PROFILES = {
    # concurrency levels x seconds per level; request mix weights. Long: the last level repeats an earlier
    # concurrency: memory may rise with load, but coming back to a load seen before must not find it higher.
    # Short (CI) is too short for the allocators to reach a steady state: only the peak bound applies.
    "short": {"levels": [2, 2], "seconds": 15, "mix": {"image": 6, "video": 1, "ws": 2}, "leak_check": False},
    "long": {"levels": [1, 4, 8, 16, 4], "seconds": 120, "mix": {"image": 6, "video": 1, "ws": 2},
             "leak_check": True},
}
FACE_DIFF_MIN = 15.0  # mean absolute difference (0-255) the face region must show after masking
MAX_WORK_QUEUED = 8  # the server's default work slots: more clients than this may be shed with 503 (counted)
RSS_MAX = 3 << 30  # the server's peak, with 2 threads and up to 16 clients
RSS_REPEAT_GROWTH_MAX = 200 << 20  # end of the repeated level vs the highest end of the levels before it


@dataclass
class Media:
    image: bytes
    image_rgb: np.ndarray
    image_box: tuple[int, int, int, int]
    video: bytes
    video_frames: list[np.ndarray]
    video_boxes: list[np.ndarray]
    ws_frames: list[bytes]
    ws_rgb: list[np.ndarray]
    ws_box: tuple[int, int, int, int]


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def make_media(work: Path) -> Media:
    import cv2
    from skimage import data

    from tests.conftest import ASTRONAUT_FACE
    from tests.video_helpers import make_clip, read_video

    astro = data.astronaut()
    clip = make_clip(str(work / "soak.mp4"), n_frames=36, size=(320, 240), fps=12, face=80, audio=False)
    frames, _, _ = read_video(clip.path)
    small = cv2.resize(astro, (320, 240), interpolation=cv2.INTER_AREA)
    sx, sy = 320 / 512, 240 / 512
    ws_box = (int(ASTRONAUT_FACE[0] * sx), int(ASTRONAUT_FACE[1] * sy), int(ASTRONAUT_FACE[2] * sx),
              int(ASTRONAUT_FACE[3] * sy))
    ws_frames = [_jpeg(np.roll(small, i % 5, axis=1), 85) for i in range(20)]
    return Media(_jpeg(astro), astro, ASTRONAUT_FACE, (work / "soak.mp4").read_bytes(), frames,
                 [b.reshape(-1, 4)[0] for b in clip.boxes], ws_frames, [_rgb(f) for f in ws_frames], ws_box)


class FaceCheck:
    """Did a face survive? The region must have changed, and CenterFace must not find a face in it."""

    def __init__(self) -> None:
        from anon_core.detectors import create_detector

        self.det = create_detector("face", model="centerface", threshold=0.5, scales=[1.0], max_side=1920)
        self.lock = threading.Lock()

    def survived(self, out: np.ndarray, ref: np.ndarray, box) -> str | None:
        x1, y1, x2, y2 = (int(v) for v in box)
        if out.shape != ref.shape:
            return f"shape {out.shape} != {ref.shape}"
        diff = float(np.abs(out[y1:y2, x1:x2].astype(int) - ref[y1:y2, x1:x2].astype(int)).mean())
        if diff < FACE_DIFF_MIN:
            return f"face region changed by only {diff:.1f}"
        with self.lock:
            found = self.det.detect([out])[0]
        for b in found.xyxy:
            ix = max(0.0, min(b[2], x2) - max(b[0], x1))
            iy = max(0.0, min(b[3], y2) - max(b[1], y1))
            if ix * iy > 0.3 * (b[2] - b[0]) * (b[3] - b[1]):
                return "the check detector still finds a face in the masked region"
        return None


@dataclass
class Tally:
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"image": [], "video": [], "ws": []})
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: {"image": 0, "video_frames": 0, "ws_frames": 0})
    shed: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, kind: str, code: int | str) -> None:
        with self.lock:
            k = f"{kind}:{code}"
            self.statuses[k] = self.statuses.get(k, 0) + 1

    def fail(self, msg: str) -> None:
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(msg)


def start_server(keys: list[str], tmp: Path, workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    return start_serve(["--workers", str(workers), "--tmp-dir", str(tmp), "--set", "policy=faces"],
                       {"ANON_API_KEYS": ",".join(keys)}, log_path)


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _shed(r, t: Tally, kind: str, clients: int) -> bool:
    """A 503 'busy' from admission control is load shedding, expected only with more clients than work slots."""
    if r.status_code == 503 and clients > MAX_WORK_QUEUED and r.json().get("code") == "busy":
        with t.lock:
            t.shed[kind] = t.shed.get(kind, 0) + 1
        time.sleep(float(r.headers.get("retry-after", "1")))  # what a polite client does
        return True
    return False


def do_image(c, media: Media, check: FaceCheck, t: Tally, clients: int = 1) -> None:
    t0 = time.perf_counter()
    r = c.post("/v1/anonymize", content=media.image, headers={"Content-Type": "image/jpeg"})
    t.status("image", r.status_code)
    if _shed(r, t, "image", clients):
        return
    if r.status_code != 200:
        t.fail(f"image: HTTP {r.status_code} {r.text[:120]}")
        return
    t.latency_ms["image"].append((time.perf_counter() - t0) * 1000)
    why = check.survived(_rgb(r.content), media.image_rgb, media.image_box)
    if why:
        t.fail(f"image: {why}")
    with t.lock:
        t.checked["image"] += 1


def do_video(c, media: Media, check: FaceCheck, t: Tally, work: Path, clients: int = 1) -> None:
    from tests.video_helpers import read_video

    t0 = time.perf_counter()
    r = c.post("/v1/anonymize", content=media.video, headers={"Content-Type": "video/mp4"})
    t.status("video", r.status_code)
    if _shed(r, t, "video", clients):
        return
    if r.status_code != 200:
        t.fail(f"video: HTTP {r.status_code} {r.text[:120]}")
        return
    t.latency_ms["video"].append((time.perf_counter() - t0) * 1000)
    fd, path = tempfile.mkstemp(suffix=".mp4", dir=work)
    try:
        os.write(fd, r.content)
        os.close(fd)
        frames, _, _ = read_video(path)
    finally:
        os.unlink(path)
    if len(frames) != len(media.video_frames):
        t.fail(f"video: {len(frames)} frames back, {len(media.video_frames)} sent")
        return
    for i in range(0, len(frames), 6):  # every 6th frame through the check detector (it is slow on a CPU)
        why = check.survived(frames[i], media.video_frames[i], media.video_boxes[i])
        if why:
            t.fail(f"video frame {i}: {why}")
        with t.lock:
            t.checked["video_frames"] += 1


def do_ws(ws_url: str, key: str, media: Media, check: FaceCheck, t: Tally) -> None:
    from jobs.service.client import stream_frames

    t0 = time.perf_counter()
    try:
        res = asyncio.run(stream_frames(ws_url, key, media.ws_frames, {"backpressure": "queue", "queue": 4},
                                        timeout_s=300))
    except Exception as exc:  # a closed or refused connection is a failure of the soak, reported as such
        t.status("ws", type(exc).__name__)
        t.fail(f"ws: {type(exc).__name__}: {str(exc)[:120]}")
        return
    ok = not res.errors and not res.dropped and len(res.frames) == len(media.ws_frames)
    t.status("ws", "ok" if ok else "incomplete")
    if not ok:
        t.fail(f"ws: {len(res.frames)} frames back, errors {res.errors[:2]}, dropped {len(res.dropped)}")
        return
    t.latency_ms["ws"].append((time.perf_counter() - t0) * 1000)
    for i in (0, len(res.frames) // 2, len(res.frames) - 1):
        why = check.survived(_rgb(res.frames[i][1]), media.ws_rgb[i], media.ws_box)
        if why:
            t.fail(f"ws frame {i}: {why}")
        with t.lock:
            t.checked["ws_frames"] += 1


def run_level(url: str, keys: list[str], clients: int, seconds: float, mix: dict, media: Media, check: FaceCheck,
              work: Path, seed: int) -> dict:
    import httpx

    t = Tally()
    stop = time.monotonic() + seconds
    kinds = [k for k, w in mix.items() for _ in range(w)]

    def client(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        key = keys[i % len(keys)]
        first = ["video", "ws", "image"]  # every client covers each kind once (slowest first), then the mix
        first = first[i % 3:] + first[:i % 3]
        n = 0
        with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as c:
            while n < len(first) or time.monotonic() < stop:  # each kind once even when the machine is slow
                kind = first[n] if n < len(first) else rnd.choice(kinds)
                n += 1
                try:
                    if kind == "image":
                        do_image(c, media, check, t, clients)
                    elif kind == "video":
                        do_video(c, media, check, t, work, clients)
                    else:
                        do_ws(url.replace("http://", "ws://"), key, media, check, t)
                except Exception as exc:  # transport errors count as failures, the loop goes on
                    t.status(kind, type(exc).__name__)
                    t.fail(f"{kind}: {type(exc).__name__}: {str(exc)[:120]}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 900)
    wall = time.monotonic() - t0

    def pct(v: list[float], q: float) -> float | None:
        return round(float(np.percentile(v, q)), 1) if v else None

    return {"clients": clients, "seconds": round(wall, 1), "statuses": t.statuses, "checked": t.checked,
            "shed_503": t.shed,
            "failures": t.failures,
            "latency_ms": {k: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "max": pct(v, 100)}
                           for k, v in t.latency_ms.items()},
            "completed_per_s": round(sum(len(v) for v in t.latency_ms.values()) / wall, 2)}


def soak(profile: str, workers: int = 2, seconds: float | None = None, levels: list[int] | None = None) -> dict:
    prof = dict(PROFILES[profile])
    seconds = seconds or prof["seconds"]
    levels = levels or prof["levels"]
    base = Path(tempfile.mkdtemp(prefix="anon-soak-"))
    tmp, work = base / "server-tmp", base / "client"
    work.mkdir()
    keys = [secrets.token_hex(16) for _ in range(max(levels))]  # one key per client: per-key limits stay out
    proc, url = start_server(keys, tmp, workers, base / "server.log")
    samples: list[tuple[float, int]] = []
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            samples.append((time.monotonic(), rss(proc.pid)))
            stop_sampling.wait(1.0)

    result: dict = {"profile": profile, "workers": workers, "seconds_per_level": seconds, "levels": [],
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "host_cpus": os.cpu_count()}
    try:
        media = make_media(work)
        check = FaceCheck()
        rss_start = rss(proc.pid)
        threading.Thread(target=sampler, daemon=True).start()
        after_first = None
        for i, n in enumerate(levels):
            level = run_level(url, keys, n, seconds, prof["mix"], media, check, work, seed=i)
            level["rss_mb_end"] = round(rss(proc.pid) / 2**20, 1)
            result["levels"].append(level)
            if after_first is None:
                after_first = rss(proc.pid)
            print(json.dumps({k: level[k] for k in ("clients", "statuses", "completed_per_s", "rss_mb_end")}),
                  flush=True)
        time.sleep(2.0)  # responses are complete; let the last request dirs go
        left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) if tmp.exists() else []
        rss_end = rss(proc.pid)
        peak = max((v for _, v in samples), default=rss_end)
        failures = [f for lv in result["levels"] for f in lv["failures"]]
        non_ok: dict[str, int] = {}
        for lv in result["levels"]:
            for k, v in lv["statuses"].items():
                if not k.endswith((":200", ":ok")):
                    non_ok[k] = non_ok.get(k, 0) + v
        ends = [lv["rss_mb_end"] * 2**20 for lv in result["levels"]]
        growth = ends[-1] - max(ends[:-1]) if len(ends) > 1 else 0.0
        result.update(
            rss_mb={"start": round(rss_start / 2**20, 1), "after_first_level": round((after_first or 0) / 2**20, 1),
                    "peak": round(peak / 2**20, 1), "end": round(rss_end / 2**20, 1),
                    "repeat_level_growth": round(growth / 2**20, 1)},
            temp_files_left=left, failures=len(failures), non_200=non_ok,
            checked={k: sum(lv["checked"][k] for lv in result["levels"]) for k in ("image", "video_frames",
                                                                                      "ws_frames")})
        problems = []
        if failures:
            problems.append(f"{len(failures)} failed responses, e.g. {failures[:3]}")
        if left:
            problems.append(f"temp files left: {left[:5]}")
        if peak > RSS_MAX:
            problems.append(f"RSS peaked at {peak / 2**20:.0f} MB (bound {RSS_MAX >> 20} MB)")
        if prof["leak_check"] and growth > RSS_REPEAT_GROWTH_MAX:
            problems.append(f"RSS at the end of the repeated level is {growth / 2**20:.0f} MB above the earlier "
                            "levels' highest (a leak)")
        if proc.poll() is not None:
            problems.append(f"server exited with {proc.returncode}")
        result["problems"] = problems
        result["ok"] = not problems
    finally:
        stop_sampling.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="short")
    p.add_argument("--seconds", type=float, default=None, help="per concurrency level (default: the profile's)")
    p.add_argument("--levels", type=int, nargs="+", default=None, help="concurrency levels (default: profile)")
    p.add_argument("--workers", type=int, default=2, help="the server's anonymization threads")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    res = soak(a.profile, a.workers, a.seconds, a.levels)
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(json.dumps({k: res.get(k) for k in ("ok", "problems", "rss_mb", "checked", "non_200")}))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
