"""`anon validate`: run the configured pipeline on annotated data, measure it, log it to MLflow.

    anon validate --data DIR -o OUTDIR [--set k=v ...] [--classes face] [--target-fpr 0.05]
                  [--write-config PATH] [--limit N] [--iou 0.5] [--tracking-uri URI] [--no-mlflow]
    python jobs/validate.py --data DIR -o OUTDIR ...          (same arguments)

Dataset kinds (found from DIR):
- box set: `DIR/annotations.jsonl` (the shared JSONL format); the class is `--classes` or the folder name
  (faces -> face, plates -> plate, persons -> person).
- COCO: a COCO instances JSON in DIR (or `--data file.json`); images next to it or in `images/`.
- video: MOTChallenge sequences `DIR/<seq>/{img1,gt/gt.txt,seqinfo.ini}` (face_video, tracking). Frames go in order
  through the frame engine `anon anonymize` runs on a video (anon_core/video/session.py): the numbers are the
  shipped pipeline's, frame for frame.

How it measures: every detector runs once at a low score floor (`--score-floor`, default 0.2) so the PR curve
extends below the operating point (a detector's own decoding level, e.g. `candidate_threshold`, still applies);
masking is the shipped pipeline's (images: the detections at or above each detector's configured threshold;
video: the frame engine's tracked masks). Detection metrics come from `anon_core.evaluation.metrics`, pixel
leak rate / over-masking from `anon_core.evaluation.leak` (original vs anonymized inside every GT box).

Outputs in OUTDIR: predictions.jsonl (one line per image: file, boxes, scores, labels -- everything above the
floor, so anyone can re-score at any threshold), metrics.json, per_image.csv, pr_curve.png (when matplotlib is
installed), worst_misses.png, and the MLflow run (default tracking URI sqlite:///OUTDIR/mlflow.db; MLFLOW_TRACKING_URI
or --tracking-uri win). The last stdout line is a one-line JSON summary.

Calibration: `--target-fpr 0.05` picks, per class, the lowest threshold whose false positive rate
(false detections / all non-ignored detections, see metrics.py) is <= the target, and reports recall there.
`--write-config PATH` writes those thresholds as a Hydra config:
- drop it into `conf/calibration/<name>.yaml` and run `anon anonymize IN -o OUT --set +calibration=<name>`, or
- pass the `--set` lines from its header comment (e.g. `--set detectors.face.params.threshold=0.43`), or
- `load_config(config_overrides(PATH))` in Python.

The work is done by `anon_core.evaluation` (datasets, harness, results, plots, calibration); this module is the
command line and the MLflow logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/validate.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The evaluation library pulls in scikit-image (~2 s): imported inside the functions, so that building the `anon`
# argument parser (which adds this subcommand's arguments) stays fast for every other subcommand.

log = logging.getLogger("anon.validate")
DEFAULT_FLOOR = 0.2  # = anon_core.evaluation.harness.DEFAULT_FLOOR (not imported: keeps `anon --help` light)


def discover(data, classes=None, limit=None):
    """`anon_core.evaluation.datasets.discover` (kept here for callers of the old module)."""
    from anon_core.evaluation.datasets import discover as _discover

    return _discover(data, classes, limit)


def config_overrides(path: str | Path) -> list[str]:
    """A config written by --write-config as `--set` items for `jobs.config.load_config`."""
    from anon_core.evaluation.calibration import config_overrides as _overrides

    return _overrides(path)


# ----------------------------------------------------------------------------------------------- reports


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"



# ----------------------------------------------------------------------------------------------- MLflow


def _mlflow_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key.replace("<", "lt").replace("+", "plus"))


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    out: dict[str, float] = {}

    def put(key: str, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int | float) and math.isfinite(float(v)):
            out[_mlflow_name(key)] = float(v)

    for c, res in metrics["detection"].items():
        put(f"{c}.ap", res["ap"])
        put(f"{c}.ap_50_95", res["ap_50_95"])
        for k in ("precision", "recall", "f1", "fpr", "fp_per_image", "threshold"):
            put(f"{c}.{k}", res["at_threshold"][k])
        for b, v in res["recall_by_size"].items():
            put(f"{c}.recall_size_{b}", v["recall"])
        put(f"{c}.recall_at_p{res['recall_at_precision']['precision_target']:g}",
            res["recall_at_precision"]["recall"])
    for c, cal in (metrics.get("calibration") or {}).items():
        put(f"{c}.calibrated_threshold", cal.get("threshold"))
        put(f"{c}.calibrated_recall", cal.get("recall"))
        put(f"{c}.calibrated_fpr", cal.get("fpr"))
    for c, lk in metrics["leak"].items():
        put(f"{c}.leak_rate", lk["leak_rate"])
        for b, v in lk["by_size"].items():
            put(f"{c}.leak_rate_size_{b}", v["leak_rate"])
    for c, ctl in (metrics.get("controls") or {}).items():
        for k in ("reencode", "fill", "blur"):
            put(f"{c}.control_{k}.leak_rate", ctl[k]["leak_rate"])
            for b, v in ctl[k]["by_size"].items():
                put(f"{c}.control_{k}.leak_rate_size_{b}", v["leak_rate"])
    put("over_masking", metrics["over_masking"])
    put("seconds_per_image", metrics["seconds_per_image"])
    if "video" in metrics:
        for key in ("tracked", "per_frame_masking"):
            v = metrics["video"][key]
            put(f"video.{key}.leak_rate", v["leak_rate"])
            put(f"video.{key}.frame_leak_rate", v["frame_leak_rate"])
            put(f"video.{key}.max_longest_leak_run", v["max_longest_leak_run"])
    for name, r in (metrics.get("reid") or {}).get("rank1", {}).items():
        for band, v in r.items():
            put(f"reid.{name}.rank1_{band}", v)
    return out


def mlflow_params(metrics: dict, args: argparse.Namespace) -> dict[str, str]:
    p = metrics["pipeline"]
    out = {"dataset": metrics["dataset"]["path"], "dataset_kind": metrics["dataset"]["kind"],
           "n_images": metrics["dataset"]["n_images"], "classes": ",".join(metrics["dataset"]["classes"]),
           "policy": p["policy"], "config_hash": p["config_hash"], "git_commit": git_commit(),
           "iou": metrics["iou"], "match_fn": metrics["match_fn"], "score_floor": p["score_floor"],
           "target_fpr": args.target_fpr, "overrides": " ".join(args.set) or "-", "limit": args.limit}
    for c, t in p["operating_thresholds"].items():
        out[f"threshold.{c}"] = t
    for key, m in p["models"].items():
        out[f"model.{key}"] = m["name"]
        out[f"model.{key}.version"] = m["version"]
        out[f"model.{key}.weights_sha256"] = m["weights_sha256"][:16]
        for k, v in m["params"].items():
            out[f"detector.{key}.{k}"] = json.dumps(v) if not isinstance(v, str) else v
    for c, m in p["masks"].items():
        out[f"mask.{c}"] = json.dumps(m, default=str)
    return {_mlflow_name(k): str(v)[:500] for k, v in out.items()}


def tracking_uri(args: argparse.Namespace, out: Path) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def log_mlflow(metrics: dict, args: argparse.Namespace, out: Path, artifacts: list[Path]) -> dict:
    from anon_core.offline import go_offline

    go_offline()  # before MLflow loads: its telemetry switch is read at import
    # MLflow is slow to import and optional for the rest of anon: only this path loads it
    import mlflow

    uri = tracking_uri(args, out)
    # keep MLflow's own chatter off stdout: the summary line must be the last thing there
    with contextlib.redirect_stdout(sys.stderr):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the current directory
                location = Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
            exp_id = client.create_experiment(args.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        name = f"{Path(metrics['dataset']['path']).name}-{'+'.join(metrics['dataset']['classes'])}"
        with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
            mlflow.set_tags({"anon.command": "validate", "anon.dataset_kind": metrics["dataset"]["kind"]})
            mlflow.log_params(mlflow_params(metrics, args))
            mlflow.log_metrics(mlflow_metrics(metrics))
            for c, res in metrics["detection"].items():  # the sweep as a metric history: step = threshold x 100
                for row in res["sweep"]:
                    for k in ("recall", "precision", "fpr"):
                        if row[k] is not None:
                            step = round(row["threshold"] * 100)
                            mlflow.log_metric(_mlflow_name(f"{c}.sweep_{k}"), row[k], step=step)
            for a in artifacts:
                if a.exists():
                    mlflow.log_artifact(str(a))
            return {"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri}


# ----------------------------------------------------------------------------------------------- entry points


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", required=True, help="annotations.jsonl folder/file, COCO JSON, or MOT sequences folder")
    p.add_argument("-o", "--output", required=True, help="folder for predictions.jsonl, metrics.json, plots")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: from the folder name)")
    p.add_argument("--target-fpr", type=float, default=None,
                   help="calibrate: per class, the lowest threshold with FPR (false/all detections) <= this")
    p.add_argument("--write-config", default=None, metavar="PATH", help="write calibrated thresholds as Hydra YAML")
    p.add_argument("--limit", type=int, default=None, help="first N images (video: first N frames per sequence)")
    p.add_argument("--iou", type=float, default=None, help="match IoU (default 0.5; 0.3 for video, loose YTF boxes)")
    p.add_argument("--match", choices=("iou", "centre"), default="iou", help="match rule (centre: det centre in GT)")
    p.add_argument("--score-floor", type=float, default=DEFAULT_FLOOR,
                   help="detectors run down to this score so the PR curve extends below the operating point")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///OUTDIR/mlflow.db)")
    p.add_argument("--experiment", default="anon-validate", help="MLflow experiment name")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    p.add_argument("--controls", action="store_true",
                   help="also score the leak metric's controls on every image: an unmasked JPEG re-encode (must "
                        "leak ~100 %%), a solid fill and a strong blur of every GT box (must leak 0 %%)")
    p.add_argument("--reid", action="store_true", help="face re-identification attack (needs the `subjects` extra)")
    return p


def validate(args: argparse.Namespace) -> dict:
    """Run one validation; returns the summary dict (also written to OUTDIR/summary.json)."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    from anon_core.evaluation.calibration import write_config
    from anon_core.evaluation.harness import build_pipeline, run_images, run_video
    from anon_core.evaluation.plots import plot_pr
    from anon_core.evaluation.results import compute_metrics, write_csv
    from jobs.config import load_config

    ds = discover(args.data, classes, args.limit)
    iou = args.iou if args.iou is not None else (0.3 if ds.kind == "video" else 0.5)
    pipe = build_pipeline(load_config(list(args.set)), ds.classes, args.score_floor)
    runner = run_video if ds.kind == "video" else run_images
    col = runner(ds, pipe, out, iou, args.match, args.progress, bool(getattr(args, "controls", False)))
    metrics = compute_metrics(ds, pipe, col, iou, args.match, args.target_fpr)
    if getattr(args, "reid", False) and ds.kind != "video" and "face" in ds.classes:  # anon_core/evaluation/reid.py
        from anon_core.evaluation.datasets import load_rgb
        from anon_core.evaluation.reid import validate_reid

        metrics["reid"] = validate_reid(col.pairs, load_rgb, pipe.anonymizer.mask, pipe.operating,
                                        pipe.config.masks["face"])

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str), encoding="utf-8")
    write_csv(col.rows, out / "per_image.csv")
    artifacts = [out / "metrics.json", out / "per_image.csv", out / "predictions.jsonl"]
    if plot_pr(metrics, out / "pr_curve.png"):
        artifacts.append(out / "pr_curve.png")
    if col.gallery.save(out / "worst_misses.png"):
        artifacts.append(out / "worst_misses.png")
    written = None
    if args.write_config:
        if args.target_fpr is None:
            raise ValueError("--write-config needs --target-fpr")
        written = write_config(metrics, Path(args.write_config))
        artifacts.append(Path(args.write_config))

    summary: dict = {"data": str(ds.root), "kind": ds.kind, "n_images": ds.n_images, "config_hash": pipe.deploy_hash}
    for c, res in metrics["detection"].items():
        at = res["at_threshold"]
        s = {"threshold": at["threshold"], "ap": res["ap"], "ap_50_95": res["ap_50_95"], "precision": at["precision"],
             "recall": at["recall"], "fpr": at["fpr"], "fp_per_image": at["fp_per_image"],
             "leak_rate": metrics["leak"].get(c, {}).get("leak_rate"),
             "leak_by_size": {b: v["leak_rate"] for b, v in metrics["leak"].get(c, {}).get("by_size", {}).items()}}
        ctl = (metrics.get("controls") or {}).get(c)
        if ctl is not None:
            s["controls"] = {k: ctl[k]["leak_rate"] for k in ("reencode", "fill", "blur")}
        cal = (metrics.get("calibration") or {}).get(c)
        if cal is not None:
            s["calibrated"] = {"target_fpr": cal["target_fpr"], "threshold": cal.get("threshold"),
                               "recall": cal.get("recall"), "fpr": cal.get("fpr")}
        summary[c] = s
    summary["over_masking"] = metrics["over_masking"]
    if "reid" in metrics:
        summary["reid_rank1"] = {k: v["all"] for k, v in metrics["reid"]["rank1"].items()}
    if "video" in metrics:
        v = metrics["video"]
        summary["video"] = {k: {"frame_leak_rate": v[k]["frame_leak_rate"], "leak_rate": v[k]["leak_rate"],
                                "max_longest_leak_run": v[k]["max_longest_leak_run"]}
                            for k in ("tracked", "per_frame_masking")}
    if written is not None:
        summary["config_written"] = {"path": str(args.write_config), "overrides": written}
    if not args.no_mlflow:
        summary["mlflow"] = log_mlflow(metrics, args, out, artifacts)
    summary["out"] = str(out.resolve())
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        summary = validate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"anon validate: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    from anon_core.offline import go_offline

    go_offline()
    logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    p = add_arguments(argparse.ArgumentParser(prog="anon validate", description=__doc__.split("\n")[0]))
    return cmd_validate(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())



