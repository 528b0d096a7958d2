"""anon train: fine-tune a YOLO model (ultralytics) on a user's dataset and log it to MLflow.

    python jobs/train.py --data DATA --model MODEL -o OUTDIR [--epochs 50] [--imgsz 640] [--batch 16]
                         [--classes plate,person] [--val-fraction 0.2] [--export onnx] [--register NAME]
                         [--tracking-uri URI] [--experiment anon-train]

DATA: a YOLO dataset YAML (ultralytics layout), or our JSONL format (an `annotations.jsonl` file or its folder,
boxes in absolute pixels, optional per-box `labels`), converted to YOLO layout under OUTDIR/dataset (images are
linked, not copied; rows are split into train/val by a hash of the file name, so the split is stable).
MODEL: a local `.pt` to fine-tune, or an architecture YAML shipped with ultralytics (`yolov8n.yaml`: random init).
Names are never downloaded: a `.pt` that is not a local file is an error.

MLflow (default tracking URI sqlite:///OUTDIR/mlflow.db, or MLFLOW_TRACKING_URI): the arguments as params, the
per-epoch metrics as metric histories, final precision/recall/mAP, and the weights (best.pt, plus the export) as
artifacts under `weights/`; --register NAME also registers them, so `models:/NAME/<version>` works as the `weights`
of the `yolo` detector. Prints one JSON summary line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_core.detectors.yolo import offline_ultralytics

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _split(name: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def jsonl_to_yolo(src: str | Path, dst: Path, classes: list[str] | None, default_class: str,
                  val_fraction: float = 0.2) -> Path:
    """Our JSONL annotations -> a YOLO dataset under dst (symlinked images, normalised cx cy w h labels)."""
    src = Path(src)
    jsonl = src / "annotations.jsonl" if src.is_dir() else src
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    if classes is None:
        names = sorted({str(lab) for r in rows for lab in (r.get("labels") or [])}) or [default_class]
    else:
        names = list(classes)
    index = {n: i for i, n in enumerate(names)}
    counts = {"train": 0, "val": 0}
    for r in rows:
        img = (jsonl.parent / r["file"]).resolve()
        split = _split(r["file"], val_fraction)
        stem = r["file"].replace("/", "__").rsplit(".", 1)[0]  # unique, flat names
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        link = dst / "images" / split / f"{stem}{img.suffix.lower()}"
        if not link.exists():
            link.symlink_to(img)
        w, h = float(r["width"]), float(r["height"])
        labels = r.get("labels") or [default_class] * len(r["boxes"])
        lines = []
        for (x1, y1, x2, y2), lab in zip(r["boxes"], labels):
            if str(lab) not in index:
                continue  # a class the user did not ask to train
            lines.append(f"{index[str(lab)]} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                         f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
        (dst / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        counts[split] += 1
    if not counts["val"]:  # tiny sets: validate on the training images rather than on nothing
        val = "images/train"
    else:
        val = "images/val"
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(json.dumps({"path": str(dst.resolve()), "train": "images/train", "val": val,
                                     "names": dict(enumerate(names))}, indent=1))  # JSON is valid YAML
    return yaml_path


def resolve_model(model: str) -> str:
    """A local .pt, or an architecture YAML from the ultralytics package; never a name to download."""
    p = Path(model).expanduser()
    if p.is_file():
        return str(p)
    if model.endswith((".yaml", ".yml")):
        import ultralytics

        pkg = Path(ultralytics.__file__).parent / "cfg" / "models"
        # yolov8n.yaml is yolov8.yaml at scale n: ultralytics resolves the scale from the name itself
        base = Path(model).name
        stripped = base[:6] + base[7:] if base[:6] in ("yolov8", "yolo11") and base[6:7] in "nsmlx" else base
        if any(pkg.rglob(stripped)) or any(pkg.rglob(base)):
            return base
    raise FileNotFoundError(f"model {model!r} is neither a local file nor an architecture YAML shipped with "
                            f"ultralytics; weights are never downloaded (anon runs offline)")


def _epoch_metrics(results_csv: Path) -> list[dict[str, float]]:
    if not results_csv.exists():
        return []
    with results_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        vals = {}
        for k, v in r.items():
            try:
                vals[k.strip()] = float(v)
            except (TypeError, ValueError):
                continue
        out.append(vals)
    return out


def _metric_name(k: str) -> str:
    return k.replace("(B)", "_B").replace("(M)", "_M").replace("/", ".").replace(":", "_").strip("_. ")


def train(args: argparse.Namespace) -> dict:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    offline_ultralytics()
    from ultralytics import YOLO

    classes = args.classes.split(",") if args.classes else None
    data = Path(args.data)
    if data.suffix in (".yaml", ".yml"):
        data_yaml = data.resolve()
    else:
        data_yaml = jsonl_to_yolo(data, out / "dataset", classes, args.default_class, args.val_fraction)
    model_ref = resolve_model(args.model)
    model = YOLO(model_ref)
    train_kw = dict(data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
                    workers=args.workers, seed=args.seed, deterministic=True, project=str(out), name="run",
                    exist_ok=True, plots=False, verbose=False, amp=False, val=not args.no_val, patience=args.patience)
    if args.lr0 is not None:
        train_kw["lr0"] = args.lr0
    # ultralytics prints its progress to stdout; ours must end with the JSON summary alone
    with contextlib.redirect_stdout(sys.stderr):
        model.train(**train_kw)
    run_dir = Path(model.trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    if not best.exists():
        best = run_dir / "weights" / "last.pt"
    final = {_metric_name(k): float(v) for k, v in (getattr(model.trainer, "metrics", None) or {}).items()
             if isinstance(v, (int, float))}
    exported: Path | None = None
    if args.export:
        with contextlib.redirect_stdout(sys.stderr):
            # simplify=False: onnxslim is not a dependency, and YOLO_AUTOINSTALL=0 would refuse to install it
            exported = Path(YOLO(str(best)).export(format=args.export, imgsz=args.imgsz, simplify=False,
                                                   dynamic=args.export == "onnx", verbose=False))
    summary: dict = {"weights": str(best), "export": str(exported) if exported else None, "data": str(data_yaml),
                     "metrics": final}
    if not args.no_mlflow:
        summary["mlflow"] = log_mlflow(args, train_kw, model_ref, run_dir, best, exported, final)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def log_mlflow(args: argparse.Namespace, train_kw: dict, model_ref: str, run_dir: Path, best: Path,
               exported: Path | None, final: dict[str, float]) -> dict:
    from anon_core.offline import go_offline

    go_offline()  # before MLflow loads: its telemetry switch is read at import
    import mlflow  # slow import, only on this path

    out = Path(args.output).resolve()
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    with contextlib.redirect_stdout(sys.stderr):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            location = out.joinpath("mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
            exp_id = client.create_experiment(args.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{Path(args.data).stem}-{Path(model_ref).stem}") as run:
            mlflow.set_tags({"anon.command": "train", "anon.model_source": model_ref})
            params = {k: str(v)[:500] for k, v in train_kw.items() if k not in ("project", "name", "exist_ok")}
            params.update(model=model_ref, export=str(args.export), val_fraction=str(args.val_fraction))
            mlflow.log_params(params)
            for step, row in enumerate(_epoch_metrics(run_dir / "results.csv")):
                mlflow.log_metrics({_metric_name(k): v for k, v in row.items() if k != "epoch"}, step=step)
            if final:
                mlflow.log_metrics(final)
            mlflow.log_artifact(str(best), artifact_path="weights")
            if exported is not None:
                if exported.is_dir():
                    mlflow.log_artifacts(str(exported), artifact_path=f"weights/{exported.name}")
                else:
                    mlflow.log_artifact(str(exported), artifact_path="weights")
            if (run_dir / "args.yaml").exists():
                mlflow.log_artifact(str(run_dir / "args.yaml"))
            info = {"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri,
                    "weights_uri": f"runs:/{run.info.run_id}/weights"}
            source = f"{run.info.artifact_uri.rstrip('/')}/weights"
        if args.register:
            # a plain model version over the weights folder: MLflow 3's register_model wants an MLflow-flavoured
            # logged model, which YOLO weights are not
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.create_registered_model(args.register)
            mv = client.create_model_version(args.register, source, run_id=info["run_id"])
            info["model_uri"] = f"models:/{args.register}/{mv.version}"
    return info


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", required=True, help="YOLO dataset YAML, or annotations.jsonl (file or folder)")
    p.add_argument("--model", default="yolov8n.yaml", help="local .pt to fine-tune, or an architecture YAML")
    p.add_argument("-o", "--output", required=True, help="output folder (dataset conversion, runs, mlflow.db)")
    p.add_argument("--classes", default=None, help="JSONL: comma-separated class names (default: labels found)")
    p.add_argument("--default-class", default="object", help="JSONL rows without `labels`: the class of every box")
    p.add_argument("--val-fraction", type=float, default=0.2, help="JSONL: share of images held out for validation")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr0", type=float, default=None)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--device", default="cpu", help="cpu, 0 (first GPU), ...")
    p.add_argument("--workers", type=int, default=0, help="dataloader workers (0: in process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-val", action="store_true", help="skip per-epoch validation")
    p.add_argument("--export", default=None, choices=(None, "onnx", "openvino", "torchscript"),
                   help="also export best.pt (logged beside it)")
    p.add_argument("--register", default=None, metavar="NAME", help="register the weights in the MLflow registry")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///OUTDIR/mlflow.db)")
    p.add_argument("--experiment", default="anon-train")
    p.add_argument("--no-mlflow", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args(argv)
    summary = train(args)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
