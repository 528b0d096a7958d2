"""Calibrated thresholds: as `--set` keys, as a Hydra config file, and back from that file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def calibration_overrides(metrics: dict) -> dict[str, float]:
    """`--set`-style keys for the calibrated thresholds, e.g. {"detectors.face.params.threshold": 0.43}."""
    out = {}
    for cal in (metrics.get("calibration") or {}).values():
        if cal.get("threshold") is not None:
            out[f"detectors.{cal['detector']}.params.threshold"] = round(float(cal["threshold"]), 4)
    return out


def write_config(metrics: dict, path: Path) -> dict[str, float]:
    """Write the calibrated thresholds as a Hydra config (nested, `@package _global_`) with `--set` lines."""
    import yaml

    flat = calibration_overrides(metrics)
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    lines = ["# @package _global_",
             f"# Calibrated by `anon validate` on {metrics['dataset']['path']}",
             f"# config {metrics['pipeline']['config_hash']}, IoU {metrics['iou']:g}"]
    for c, cal in (metrics.get("calibration") or {}).items():
        if cal.get("threshold") is None:
            lines.append(f"# {c}: no threshold reaches FPR <= {cal['target_fpr']:g} (left unchanged)")
        else:
            lines.append(f"# {c}: FPR {cal['fpr']:.4f} <= {cal['target_fpr']:g} at threshold {cal['threshold']:.4f}, "
                         f"recall {cal['recall']:.4f}")
    lines += ["# Use: copy to conf/calibration/<name>.yaml and add `--set +calibration=<name>`, or pass:"]
    lines += [f"#   --set {k}={v}" for k, v in flat.items()]
    body = yaml.safe_dump(nested, sort_keys=True) if nested else "{}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return flat


def config_overrides(path: str | Path) -> list[str]:
    """A config written by --write-config as `--set` items for `jobs.config.load_config`."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}

    def flat(node, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from flat(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            yield f"{prefix}={json.dumps(node)}"

    return list(flat(data, ""))
