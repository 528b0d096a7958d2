"""`anon report`: a DPIA / GDPR Art. 30 processing record from audit manifests, and data-subject lookups.

    anon report OUT/_manifests -o report/ [--tracking-uri sqlite:///val/mlflow.db]
    anon report --lookup <sha256|relative path|input URI> OUT/_manifests

Manifests: a Parquet file, a folder of them (searched recursively; the CLI's `_manifests/<run>.parquet`)
or the archive job's partitioned dataset (`<root>/run_id=<id>/part-*.parquet`); local paths or fsspec URLs.
Names starting with `_` or `.` below the given folder are not manifests (so give `OUT/_manifests`, not `OUT`);
a damaged part is skipped with a warning. Rows are aggregated file by file, so memory follows the largest part
file, not the archive (one reader for every manifest: `anon_core/manifests.py`).
The report states facts from the audit only: what was processed, when, with which models (name, version,
weights sha256), thresholds and configuration, what was found and masked, what failed and why, where
originals and outputs are, plus the latest validation metrics from MLflow when a store is given.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import posixpath
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_FAILURE_ROWS = 200  # failures listed one by one; the rest are counted by code


# ------------------------------------------------------------------------------------------------ reading


def _license(model: dict) -> str:
    """A model's license as recorded; rows written before the license column get the registry's."""
    if model.get("license"):
        return str(model["license"])
    from anon_core.licenses import license_of
    from anon_core.weights import ModelInfo

    return license_of(ModelInfo(str(model.get("name") or ""), "", "", "")).license


def iter_rows(paths: list[str]):
    """Manifest rows as dicts, part by part (`anon_core.manifests`: damaged parts are skipped with a warning,
    `run_id` filled from a `run_id=<id>` folder when the column is empty); each row names its `_manifest`."""
    from anon_core.manifests import iter_rows as manifest_rows
    from anon_core.storage import filesystem

    for p in paths:
        fs, root = filesystem(p)
        if not fs.exists(root):
            raise FileNotFoundError(f"no manifest file or folder at {p}")
        for path, _i, row in manifest_rows(fs, root):
            row["_manifest"] = path
            yield row


# ------------------------------------------------------------------------------------------------ aggregation


def _pairs(v) -> dict:
    """Parquet map columns come back as lists of (key, value) tuples."""
    if v is None:
        return {}
    return dict(v) if not isinstance(v, dict) else v


def _uri_root(uris: list[str]) -> str:
    """The common folder of a run's URIs (scheme kept): where its originals / outputs are."""
    if not uris:
        return "-"
    scheme = ""
    if "://" in uris[0]:
        scheme = uris[0].split("://", 1)[0] + "://"
    paths = [u[len(scheme):] if scheme and u.startswith(scheme) else u for u in uris]
    try:
        common = posixpath.commonpath(paths)
    except ValueError:  # absolute and relative paths mixed
        return "(several locations)"
    if len(paths) == 1:
        common = posixpath.dirname(common)
    return scheme + common


@dataclass
class RunInfo:
    run_id: str
    assets: int = 0
    status: Counter = field(default_factory=Counter)
    started: datetime | None = None
    finished: datetime | None = None
    inputs: list[str] = field(default_factory=list)  # a sample, for the location
    outputs: list[str] = field(default_factory=list)
    policies: set = field(default_factory=set)
    config_hashes: set = field(default_factory=set)
    versions: set = field(default_factory=set)
    hosts: set = field(default_factory=set)


@dataclass
class Aggregate:
    manifests: set = field(default_factory=set)
    rows: int = 0
    runs: dict[str, RunInfo] = field(default_factory=dict)
    status: Counter = field(default_factory=Counter)
    media: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)  # (name, version, sha256, source, license) -> assets
    thresholds: dict[str, dict] = field(default_factory=dict)  # config hash -> thresholds
    configs: dict[str, dict] = field(default_factory=dict)  # config hash -> parsed config (when recorded)
    policies: Counter = field(default_factory=Counter)
    detections: Counter = field(default_factory=Counter)
    masked: Counter = field(default_factory=Counter)
    metadata_removed: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # error code -> count
    failure_rows: list[dict] = field(default_factory=list)
    residual: Counter = field(default_factory=Counter)
    residual_models: set = field(default_factory=set)
    whole_frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames: int = 0
    media_seconds: float = 0.0

    def add(self, r: dict) -> None:
        self.rows += 1
        self.manifests.add(r.get("_manifest"))
        st = r.get("status") or "unknown"
        run = self.runs.setdefault(r.get("run_id") or "-", RunInfo(r.get("run_id") or "-"))
        run.assets += 1
        run.status[st] += 1
        for attr, v, better in (("started", r.get("started_at"), min), ("finished", r.get("finished_at"), max)):
            if v is not None:
                cur = getattr(run, attr)
                setattr(run, attr, v if cur is None else better(cur, v))
        if r.get("input_uri") and len(run.inputs) < 1000:
            run.inputs.append(r["input_uri"])
        if r.get("output_uri") and len(run.outputs) < 1000:
            run.outputs.append(r["output_uri"])
        for s, v in ((run.policies, r.get("policy")), (run.config_hashes, r.get("config_hash")),
                     (run.versions, r.get("anon_version")), (run.hosts, r.get("host"))):
            if v:
                s.add(v)
        self.status[st] += 1
        self.media[r.get("media_type") or "unknown"] += 1
        if r.get("format"):
            self.formats[r["format"]] += 1
        if r.get("policy"):
            self.policies[r["policy"]] += 1
        for m in r.get("models") or []:
            self.models[(m.get("name"), m.get("version"), m.get("weights_sha256"), m.get("source"),
                         _license(m))] += 1
        ch = r.get("config_hash")
        if ch and ch not in self.thresholds:
            self.thresholds[ch] = _pairs(r.get("thresholds"))
        if ch and r.get("config_json") and ch not in self.configs:
            try:
                self.configs[ch] = json.loads(r["config_json"])
            except ValueError:
                pass
        extra = {}
        if r.get("extra_json"):
            try:
                extra = json.loads(r["extra_json"])
            except ValueError:
                extra = {}
        if st == "ok":
            self.detections.update(_pairs(r.get("detections")))
            self.masked.update(_pairs(r.get("masked")))
            self.bytes_in += r.get("input_size") or 0
            self.bytes_out += r.get("output_size") or 0
            self.frames += r.get("frames") or 0
            self.media_seconds += r.get("duration_s") or 0.0
            for item in r.get("metadata_removed") or []:
                self.metadata_removed[str(item).split(":")[0]] += 1
            res = extra.get("residual")
            if res:
                self.residual["assets checked"] += 1
                self.residual["frames checked"] += res.get("frames_checked", 0)
                self.residual["found"] += res.get("found_total", 0)
                self.residual["re-masked"] += res.get("remasked", 0)
                self.residual[f"assets with findings ({res.get('action')})"] += int(res.get("found_total", 0) > 0)
                m = res.get("model") or {}
                self.residual_models.add((m.get("name"), m.get("version"), m.get("weights_sha256"), m.get("source"),
                                          _license(m)))
            self.whole_frames += (extra.get("analysis_errors") or {}).get("frames_masked_whole", 0)
        elif st == "failed":
            code = r.get("error_code") or "error"
            self.failures[code] += 1
            if len(self.failure_rows) < MAX_FAILURE_ROWS:
                self.failure_rows.append({"run": r.get("run_id"), "asset": r.get("relative_path") or r.get("input_uri"),
                                          "code": code, "error": r.get("error") or ""})


def aggregate(paths: list[str]) -> Aggregate:
    agg = Aggregate()
    for row in iter_rows(paths):
        agg.add(row)
    if not agg.manifests:
        raise FileNotFoundError(f"no manifest rows found under {', '.join(paths)}")
    return agg


# ------------------------------------------------------------------------------------------------ MLflow


def latest_validation(tracking_uri: str | None, experiment: str = "anon-validate") -> dict | None:
    """The newest finished `anon validate` run: params and metrics; None when there is no store or no run."""
    if not tracking_uri:
        return None
    if tracking_uri.startswith("sqlite:///") and not os.path.exists(tracking_uri[len("sqlite:///"):]):
        return {"note": f"no MLflow store at {tracking_uri}"}  # opening it would create an empty one
    try:
        from anon_core.offline import go_offline

        go_offline()  # before MLflow loads: its telemetry switch is read at import
        from mlflow.tracking import MlflowClient
    except ImportError:
        return {"note": "MLflow is not installed (pip install 'anon[validate]')"}
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {"note": f"no experiment {experiment!r} in {tracking_uri}"}
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as exc:  # a broken store must not stop the processing record from being written
        return {"note": f"cannot read MLflow store {tracking_uri}: {type(exc).__name__}: {exc}"}
    if not runs:
        return {"note": f"no finished runs in experiment {experiment!r}"}
    run = runs[0]
    metrics = {k: v for k, v in sorted(run.data.metrics.items()) if "sweep_" not in k}
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "experiment": experiment,
            "started": datetime.fromtimestamp(run.info.start_time / 1000, UTC), "params": dict(run.data.params),
            "metrics": metrics, "tracking_uri": tracking_uri}


# ------------------------------------------------------------------------------------------------ rendering


Block = tuple  # ("h1"|"h2"|"p", text) | ("ul", [items]) | ("table", headers, rows)


def _fmt_time(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(t, datetime) else "-"


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def build_blocks(agg: Aggregate, validation: dict | None, sources: list[str]) -> list[Block]:
    b: list[Block] = []
    starts = [r.started for r in agg.runs.values() if r.started]
    ends = [r.finished for r in agg.runs.values() if r.finished]
    b.append(("h1", "Record of processing: media anonymization (GDPR Art. 30 / DPIA annex)"))
    b.append(("p", f"Generated {_fmt_time(datetime.now(UTC))} by `anon report` from {len(agg.manifests)} "
                   f"manifest file(s): {', '.join(sources)}."))
    b.append(("h2", "Summary"))
    period = f"{_fmt_time(min(starts) if starts else None)} to {_fmt_time(max(ends) if ends else None)}"
    b.append(("table", ["item", "value"], [
        ["processing period", period],
        ["runs", str(len(agg.runs))],
        ["assets (rows)", str(agg.rows)],
        ["by status", ", ".join(f"{k}: {v}" for k, v in sorted(agg.status.items()))],
        ["by media type", ", ".join(f"{k}: {v}" for k, v in sorted(agg.media.items()))],
        ["formats", ", ".join(f"{k}: {v}" for k, v in agg.formats.most_common())],
        ["policies", ", ".join(f"{k}: {v}" for k, v in sorted(agg.policies.items()))],
        ["bytes read / written (ok assets)", f"{agg.bytes_in} / {agg.bytes_out}"],
        ["video frames / media seconds (ok assets)", f"{agg.frames} / {agg.media_seconds:.1f}"],
    ]))
    b.append(("h2", "Purpose and measures"))
    b.append(("p", "Personal data visible or audible in media (faces, licence plates, persons, text, voices) and "
                   "identifying metadata (EXIF/GPS, XMP, container tags, side streams) were removed or masked "
                   "before publication. Assets that could not be analysed completely were not published "
                   "(fail closed); each is listed below with its reason."))
    b.append(("h2", "Runs and data locations"))
    b.append(("p", "Originals stay where they were read from; anonymized outputs were written to the output "
                   "location. Erasure requests for originals apply to the input locations."))
    b.append(("table", ["run", "period", "assets", "status", "originals (input)", "outputs", "config hash",
                        "anon version"],
              [[r.run_id, f"{_fmt_time(r.started)} to {_fmt_time(r.finished)}", str(r.assets),
                ", ".join(f"{k}: {v}" for k, v in sorted(r.status.items())), _uri_root(r.inputs),
                _uri_root(r.outputs), ", ".join(sorted(r.config_hashes)) or "-", ", ".join(sorted(r.versions)) or "-"]
               for r in sorted(agg.runs.values(), key=lambda r: (r.started or datetime.min.replace(tzinfo=UTC)))]))
    b.append(("h2", "Models"))
    b.append(("p", "License: the SPDX id of each model's weights (models/README.md lists every model's card); "
                   "the deployment's `models.allow_licenses` decides which may run."))
    b.append(("table", ["model", "version", "license", "weights sha256", "source", "assets"],
              [[str(n), str(v), str(lic), str(s), str(src), str(c)]
               for (n, v, s, src, lic), c in sorted(agg.models.items(), key=lambda kv: -kv[1])]))
    if agg.residual_models:
        b.append(("p", "Residual-risk check model(s): " + "; ".join(
            f"{n} {v} (license {lic}, sha256 {s}, {src})"
            for n, v, s, src, lic in sorted(agg.residual_models, key=str))))
    b.append(("h2", "Thresholds and configuration"))
    rows = []
    for ch, thr in sorted(agg.thresholds.items()):
        cfg = agg.configs.get(ch, {})
        rows.append([ch, ", ".join(f"{k}={_num(v)}" for k, v in sorted(thr.items())) or "-", _config_summary(cfg)])
    b.append(("table", ["config hash", "detector thresholds", "settings (when recorded)"], rows))
    b.append(("h2", "Findings per class (ok assets)"))
    classes = sorted(set(agg.detections) | set(agg.masked))
    b.append(("table", ["class", "detected", "masked"],
              [[c, str(agg.detections.get(c, 0)), str(agg.masked.get(c, 0))] for c in classes]))
    if agg.whole_frames:
        b.append(("p", f"{agg.whole_frames} frame(s) could not be analysed and were published fully masked "
                       "(on_analysis_error=mask_frame)."))
    if agg.metadata_removed:
        b.append(("p", "Metadata removed (assets): " + ", ".join(
            f"{k}: {v}" for k, v in agg.metadata_removed.most_common(20))))
    if agg.residual:
        b.append(("h2", "Residual-risk check"))
        b.append(("table", ["item", "count"], [[k, str(v)] for k, v in sorted(agg.residual.items())]))
    b.append(("h2", "Failures (not published)"))
    if not agg.failures:
        b.append(("p", "None."))
    else:
        b.append(("table", ["error code", "assets"], [[k, str(v)] for k, v in agg.failures.most_common()]))
        b.append(("table", ["run", "asset", "code", "reason"],
                  [[f["run"], f["asset"], f["code"], f["error"]] for f in agg.failure_rows]))
        if sum(agg.failures.values()) > len(agg.failure_rows):
            b.append(("p", f"(first {len(agg.failure_rows)} failures listed)"))
    b.append(("h2", "Validation (latest MLflow run)"))
    if not validation:
        b.append(("p", "No validation store given (--tracking-uri)."))
    elif "note" in validation:
        b.append(("p", validation["note"]))
    else:
        p = validation["params"]
        b.append(("p", f"Run {validation['run_id']} ({validation['run_name']}) of {_fmt_time(validation['started'])}, "
                       f"experiment {validation['experiment']}, dataset {p.get('dataset', '-')}; validated config "
                       f"hash {p.get('config_hash', '-')}"
                       f"{' (matches a processing config)' if p.get('config_hash') in agg.thresholds else ''}."))
        b.append(("table", ["metric", "value"], [[k, _num(v)] for k, v in validation["metrics"].items()]))
    return b


def _config_summary(cfg: dict) -> str:
    if not cfg:
        return "-"
    parts = [f"policy={cfg.get('policy')}"]
    for c, m in sorted((cfg.get("masks") or {}).items()):
        parts.append(f"mask.{c}={m.get('operator')}/{m.get('shape')}")
    md = cfg.get("metadata") or {}
    kept = [k for k, v in md.items() if v is True and k not in ("keep_icc", "keep_dpi")]
    parts.append("metadata kept: " + (", ".join(kept) or "none beyond ICC/DPI"))
    audio = cfg.get("audio") or {}
    if audio:
        parts.append(f"voice={audio.get('method') if audio.get('enabled') else 'off'}")
    if "on_analysis_error" in cfg:
        parts.append(f"on_analysis_error={cfg['on_analysis_error']}")
    res = cfg.get("residual") or {}
    if res.get("enabled"):
        parts.append(f"residual={res.get('action')}")
    return "; ".join(parts)


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {blk[1]}\n")
        elif kind == "h2":
            out.append(f"## {blk[1]}\n")
        elif kind == "p":
            out.append(f"{blk[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {i}" for i in blk[1]) + "\n")
        elif kind == "table":
            headers, rows = blk[1], blk[2]
            if not rows:
                out.append("(none)\n")
                continue
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top;font-size:0.9em}th{background:#f3f3f3}code{background:#f6f6f6}")


def to_html(blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(blocks[0][1])}</title><style>{_CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(blk[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in blk[1]) + "</ul>")
        elif kind == "table":
            headers, rows = blk[1], blk[2]
            if not rows:
                out.append("<p>(none)</p>")
                continue
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(manifests: list[str], out: str, tracking_uri: str | None = None,
                 experiment: str = "anon-validate") -> dict[str, str]:
    """Write report.md and report.html (into OUT as a folder, or OUT.md/OUT.html when OUT ends in .md/.html)."""
    agg = aggregate(manifests)
    blocks = build_blocks(agg, latest_validation(tracking_uri, experiment), manifests)
    stem, ext = os.path.splitext(out)
    if ext.lower() in (".md", ".html", ".htm"):
        md_path, html_path = stem + ".md", stem + ".html"
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    else:
        os.makedirs(out, exist_ok=True)
        md_path, html_path = os.path.join(out, "report.md"), os.path.join(out, "report.html")
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(to_markdown(blocks))
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(to_html(blocks))
    return {"markdown": md_path, "html": html_path, "assets": str(agg.rows), "runs": str(len(agg.runs))}


# ------------------------------------------------------------------------------------------------ lookup

LOOKUP_FIELDS = ("run_id", "status", "media_type", "relative_path", "input_uri", "input_sha256", "output_uri",
                 "output_sha256", "started_at", "finished_at", "error_code", "error")


def lookup(manifests: list[str], key: str) -> list[dict]:
    """Every row (all runs) for one input: by input or output sha256, relative path, input URI, or URI suffix."""
    k = key.strip()
    kl = k.lower()
    is_hash = len(kl) == 64 and all(c in "0123456789abcdef" for c in kl)
    out = []
    for r in iter_rows(manifests):
        uri = r.get("input_uri") or ""
        hit = (is_hash and kl in (r.get("input_sha256"), r.get("output_sha256"))) or k in (
            r.get("relative_path"), uri, r.get("output_uri")) or (not is_hash and uri.endswith("/" + k.lstrip("/")))
        if hit:
            d = {f: r.get(f) for f in LOOKUP_FIELDS}
            d["detections"], d["masked"] = _pairs(r.get("detections")), _pairs(r.get("masked"))
            d["manifest"] = r["_manifest"]
            out.append(d)
    return sorted(out, key=lambda d: (str(d["started_at"]), d["run_id"] or ""))


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="manifest file, folder of manifests or partitioned dataset (local path or URL)")
    p.add_argument("-o", "--output", default=None,
                   help="report folder (report.md + report.html) or a .md/.html path; lookup: a JSON file")
    p.add_argument("--tracking-uri", default=None, help="MLflow store with `anon validate` runs (e.g. sqlite:///x.db)")
    p.add_argument("--experiment", default="anon-validate", help="MLflow experiment name")
    p.add_argument("--lookup", default=None, metavar="KEY_OR_SHA256",
                   help="data-subject request: every asset and output for this input sha256, path or URI")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    try:
        if args.lookup:
            rows = lookup(args.manifests, args.lookup)
            text = json.dumps({"key": args.lookup, "matches": rows}, indent=2, default=str)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as fh:
                    fh.write(text)
            print(text)
            return 0 if rows else 1
        if not args.output:
            print("anon report: -o OUT is required (folder, or a .md/.html path)", file=sys.stderr)
            return 2
        print(json.dumps(write_report(args.manifests, args.output, args.tracking_uri, args.experiment)))
        return 0
    except FileNotFoundError as exc:
        print(f"anon report: {exc}", file=sys.stderr)
        return 2
