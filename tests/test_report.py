"""`anon report`: DPIA / Art. 30 report and data-subject lookup from the manifests of a real run."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
from PIL import Image

from anon_core.config import AnonConfig
from anon_core.runner import run
from jobs.report import aggregate, latest_validation, lookup, write_report

FAST_FACE = {"face": {"name": "face", "params": {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, astronaut):
    from anon_core.audit import write_manifest
    from anon_core.storage import filesystem
    from tests.video_helpers import make_clip

    root = tmp_path_factory.mktemp("report")
    src = root / "archive" / "in"
    (src / "people").mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "PNG")
    (src / "people" / "astronaut.png").write_bytes(buf.getvalue())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_clip(str(src / "people" / "clip.mp4"), "mp4", n_frames=12, size=(160, 120), face=56, fps=12, audio=False)
    cfg = AnonConfig.from_dict({"policy": "faces", "detectors": FAST_FACE})
    summary = run(str(src), str(root / "out"), cfg, progress=False)
    # The archive job's layout: <root>/run_id=<id>/part-*.parquet plus side files, written by the same writer
    fs, _ = filesystem(str(root))
    ds = root / "job_manifests"
    for i, rec in enumerate(summary.records):
        rec.run_id = "job-run-1"
        write_manifest([rec], fs, str(ds / "run_id=job-run-1" / f"part-{i:04d}.parquet"))
    (ds / "run_id=job-run-1" / "_summary.json").write_text("{}")
    return {"root": root, "summary": summary, "src": src, "png": buf.getvalue(), "dataset": ds}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    mlflow = pytest.importorskip("mlflow")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("anon-validate", artifact_location=(db.parent / "art").as_uri())
    for ap in (0.5, 0.91):  # the later run is the one reported
        r = client.create_run(exp, run_name=f"faces-{ap}")
        client.log_param(r.info.run_id, "dataset", "/data/faces")
        client.log_param(r.info.run_id, "config_hash", "abc")
        client.log_metric(r.info.run_id, "face.ap", ap)
        client.log_metric(r.info.run_id, "face.leak_rate", 0.02)
        client.log_metric(r.info.run_id, "face.sweep_recall", 0.1, step=3)
        client.set_terminated(r.info.run_id)
    return uri


def test_report_from_cli_manifest(runs, mlflow_store, tmp_path):
    s = runs["summary"]
    assert s.ok == 2 and s.failed == 1
    res = write_report([s.manifest], str(tmp_path / "rep"), tracking_uri=mlflow_store)
    md = open(res["markdown"]).read()
    html = open(res["html"]).read()
    assert res["assets"] == "3" and res["runs"] == "1"
    rec = next(r for r in s.records if r.relative_path == "people/astronaut.png")
    model = rec.models[0]
    for text in (model["name"], model["version"], model["weights_sha256"], "face.threshold=0.5", rec.config_hash,
                 s.run_id, "broken.jpg", "corrupt", "policy=faces", "mask.face=blur/ellipse"):
        assert text in md, text
        assert text in html, text
    # where originals are kept: the common input folder of the run
    assert str(runs["src"]) in md
    # counts per class: the astronaut's face plus the clip's face track
    row = re.search(r"^\| face \| (\d+) \| (\d+) \|$", md, re.M)
    assert row and int(row.group(1)) >= 2 and int(row.group(2)) >= 2
    # latest validation run, sweep histories left out
    assert "face.ap | 0.91" in md and "face.leak_rate" in md and "sweep" not in md
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == html.count("</table>") >= 5
    assert "<script" not in html


def test_report_escapes_untrusted_text(runs, tmp_path):
    """Error messages and paths come from the input: they must not inject HTML or break Markdown tables."""
    from jobs.report import build_blocks, to_html, to_markdown

    agg = aggregate([runs["summary"].manifest])
    agg.failure_rows.append({"run": "r", "asset": "<img src=x onerror=alert(1)>|x", "code": "corrupt", "error": "a|b"})
    blocks = build_blocks(agg, None, ["m"])
    assert "<img src=x" not in to_html(blocks) and "&lt;img src=x" in to_html(blocks)
    assert "\\|x" in to_markdown(blocks)


def test_report_accepts_folders_and_partitioned_datasets(runs, tmp_path):
    root, ds = runs["root"], runs["dataset"]
    agg = aggregate([str(root / "out" / "_manifests"), str(ds)])
    assert agg.rows == 6 and set(agg.runs) == {runs["summary"].run_id, "job-run-1"}
    assert len(agg.manifests) == 4  # the CLI manifest + three job parts; _summary.json ignored
    assert agg.failures == {"corrupt": 2}
    res = write_report([str(ds)], str(tmp_path / "r.md"))
    assert res["markdown"].endswith("r.md") and res["html"].endswith("r.html")
    assert "No validation store given" in open(res["markdown"]).read()


def test_validation_store_missing_or_empty(tmp_path):
    assert latest_validation(None) is None
    assert "no MLflow store" in latest_validation(f"sqlite:///{tmp_path}/nope.db")["note"]
    assert not (tmp_path / "nope.db").exists()


def test_lookup_by_hash_path_and_uri(runs):
    s, manifests = runs["summary"], [runs["summary"].manifest, str(runs["dataset"])]
    sha = hashlib.sha256(runs["png"]).hexdigest()
    hits = lookup(manifests, sha)
    assert len(hits) == 2 and {h["run_id"] for h in hits} == {s.run_id, "job-run-1"}
    h = hits[0]
    assert h["status"] == "ok" and h["input_sha256"] == sha and h["output_uri"].endswith("people/astronaut.png")
    assert h["detections"] == {"face": 1}
    assert len(lookup(manifests, sha.upper())) == 2
    assert len(lookup(manifests, "people/astronaut.png")) == 2
    assert len(lookup(manifests, h["output_sha256"])) == 2
    assert len(lookup(manifests, str(runs["src"] / "broken.jpg"))) == 2
    assert lookup(manifests, "0" * 64) == []


def test_cli_report_and_lookup(runs, tmp_path, capsys):
    from jobs.cli import main

    man = runs["summary"].manifest
    assert main(["report", man, "-o", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "report.html").exists()
    capsys.readouterr()
    sha = hashlib.sha256(runs["png"]).hexdigest()
    assert main(["report", "--lookup", sha, man]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["key"] == sha and len(out["matches"]) == 1
    assert main(["report", "--lookup", "f" * 64, man]) == 1
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 2
    assert "no manifest" in capsys.readouterr().err
