"""The bad-input corpus (tests/badinputs.py) through `anon_core.runner.run`: every row, the output dir, the temp dir.

Each case must give a correct, anonymized output or a failed audit row with a clear one-line error; never a
crash, a hang, a partial file or an output that skipped detection.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from anon_core.audit import read_manifest
from anon_core.config import AnonConfig
from anon_core.runner import run
from tests.badinputs import Case, build_corpus

FAST_FACE = {"face": {"name": "face", "params": {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}}
CONFIG = {"policy": "faces", "detectors": FAST_FACE, "audio": {"speakers": "single", "vad": "energy"},
          "limits": {"asset_timeout_s": 120.0}}
KNOWN_CODES = {"corrupt", "unsupported", "too_large", "timeout", "analysis_error", "residual_risk", "storage"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(root / "in")
    temp_root = root / "tmp"
    temp_root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(temp_root))  # where the runner's private stream workdirs go
        summary = run(str(root / "in"), str(root / "out"), AnonConfig.from_dict(CONFIG), progress=False)
    rows = {r["relative_path"]: r for r in read_manifest(summary.manifest).to_pylist()}
    return {"root": root, "cases": cases, "summary": summary, "rows": rows, "temp_root": temp_root}


def _check_ok(rel: str, case: Case, row: dict, out: Path, src: Path) -> list[str]:
    errs = []
    target = out / rel
    if not target.is_file():
        return [f"{rel}: ok row but no output file"]
    data = target.read_bytes()
    if hashlib.sha256(data).hexdigest() != row["output_sha256"] or len(data) != row["output_size"]:
        errs.append(f"{rel}: output hash/size differ from the audit row")
    if not row["models"] or not row["config_hash"]:
        errs.append(f"{rel}: models/config hash missing")
    timings = dict(row["timings_ms"] or [])
    extra = json.loads(row["extra_json"] or "{}")
    if row["media_type"] == "image":
        if "detect" not in timings:
            errs.append(f"{rel}: image published without a detection pass")
        im = Image.open(io.BytesIO(data))
        im.load()
        if im.format.lower() != row["format"] or im.size != (row["width"], row["height"]):
            errs.append(f"{rel}: output {im.format} {im.size} vs row {row['format']} {row['width']}x{row['height']}")
        if case.face:
            a = np.asarray(Image.open(src).convert("RGB"), np.int16)
            b = np.asarray(im.convert("RGB"), np.int16)
            x1, y1, x2, y2 = case.face
            if np.abs(a[y1:y2, x1:x2] - b[y1:y2, x1:x2]).mean() < 10:
                errs.append(f"{rel}: known face not masked")
    elif row["media_type"] == "video":
        v = extra.get("video", {})
        # every frame, or with adaptive detection (the default) every roi_every-th plus the tail; the engine's
        # verify() refuses anything else, this checks it independently from the config
        k = v.get("detect_every_k", 1)
        every = v.get("analysed_every", k)
        if every not in (k, k * AnonConfig().video.roi_every) or (every != k and not v.get("adaptive")):
            errs.append(f"{rel}: analysed every {every} frames with detect_every_k={k}")
        n = row["frames"] or 0
        expected = (n + every - 1) // every + ((n - 1) % every if n else 0)
        if v.get("frames_detected") != expected:
            errs.append(f"{rel}: {v.get('frames_detected')} of {row['frames']} frames went through detection "
                        f"(expected {expected})")
        with av.open(str(target)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        if len(frames) != row["frames"]:
            errs.append(f"{rel}: output has {len(frames)} frames, row says {row['frames']}")
        if case.face:
            with av.open(str(src)) as c:
                orig = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            i = case.extra["frame"]
            x1, y1, x2, y2 = case.face
            if np.abs(orig[i][y1:y2, x1:x2].astype(int) - frames[i][y1:y2, x1:x2].astype(int)).mean() < 10:
                errs.append(f"{rel}: known face not masked in frame {i}")
    elif row["media_type"] == "audio":
        with av.open(str(target)) as c:
            n = sum(f.samples for f in c.decode(audio=0))
        if n == 0 or "audio" not in extra:
            errs.append(f"{rel}: audio output empty or without its voice report")
    else:
        errs.append(f"{rel}: ok row with media type {row['media_type']}")
    return errs


def _check_failed(rel: str, case: Case, row: dict, out: Path) -> list[str]:
    errs = []
    err = row["error"] or ""
    if not err or "\n" in err or len(err) > 400:
        errs.append(f"{rel}: error is not one clear line: {err!r}")
    if row["error_code"] not in case.codes:
        errs.append(f"{rel}: error code {row['error_code']!r} not in {case.codes} ({err})")
    if row["output_uri"] or row["output_sha256"] or (out / rel).exists():
        errs.append(f"{rel}: failed row but an output exists")
    return errs


def test_every_case_gives_output_or_clean_error(corpus):
    cases, rows, root = corpus["cases"], corpus["rows"], corpus["root"]
    assert set(rows) == set(cases), "one manifest row per input"
    problems = []
    for rel, case in sorted(cases.items()):
        row = rows[rel]
        if row["status"] == "ok":
            if case.expect == "fail":
                problems.append(f"{rel}: expected a failure, got ok")
            problems += _check_ok(rel, case, row, root / "out", root / "in" / rel)
        elif row["status"] == "failed":
            if case.expect == "ok":
                problems.append(f"{rel}: expected ok, failed with {row['error_code']}: {row['error']}")
            problems += _check_failed(rel, case, row, root / "out")
        else:
            problems.append(f"{rel}: status {row['status']}")
    assert not problems, "\n".join(problems)


def test_output_dir_holds_exactly_the_ok_outputs(corpus):
    out = corpus["root"] / "out"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    published = {f for f in files if not f.startswith("_manifests/")}
    ok = {rel for rel, r in corpus["rows"].items() if r["status"] == "ok"}
    assert published == ok
    assert not [f for f in files if f.endswith(".partial") or "/." in "/" + f]
    assert len([f for f in files if f.startswith("_manifests/")]) == 1


def test_no_raw_media_left_in_temp(corpus):
    assert list(corpus["temp_root"].iterdir()) == []


def test_summary_counts_and_codes(corpus):
    s, rows = corpus["summary"], corpus["rows"]
    assert s.ok + s.failed == len(rows) and s.failed > 20 and s.ok > 30
    assert {r["error_code"] for r in rows.values() if r["status"] == "failed"} <= KNOWN_CODES
    # the classic hostile cases are refused on their headers, before any pixel is decoded
    for rel in ("img/header_60000x60000.png", "img/header_60000x60000.jpg", "img/bomb_20000x10000.png"):
        assert rows[rel]["error_code"] == "too_large" and rows[rel]["timings_ms"], rel
        assert dict(rows[rel]["timings_ms"])["total"] < 2000, rel


def test_bomb_within_pillow_limit_but_above_ours(tmp_path):
    """Our limits apply, not only Pillow's: a 6000x6000 PNG with max_pixels=10M is refused as too large."""
    from tests.badinputs import png_zlib_bomb

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.png").write_bytes(png_zlib_bomb(6000, 6000))
    cfg = AnonConfig.from_dict({**CONFIG, "limits": {"max_pixels": 10_000_000}})
    s = run(str(tmp_path / "in"), str(tmp_path / "out"), cfg, progress=False)
    assert s.records[0].error_code == "too_large" and not (tmp_path / "out" / "b.png").exists()


def test_video_frame_limits(tmp_path):
    """A stream above the frame-size or frame-count limits is refused, not decoded to the end."""
    from tests.badinputs import encode_video

    (tmp_path / "in").mkdir()
    encode_video(str(tmp_path / "in" / "v.mp4"), "mp4", "libx264", "yuv420p", (160, 120), n=8,
                 options={"preset": "ultrafast"})
    for limits in ({"max_side": 100}, {"max_video_frames": 4}):
        cfg = AnonConfig.from_dict({**CONFIG, "limits": {**CONFIG["limits"], **limits}})
        s = run(str(tmp_path / "in"), str(tmp_path / f"out{len(limits)}{os.urandom(2).hex()}"), cfg, progress=False)
        assert s.records[0].error_code == "too_large", (limits, s.records[0].error)
