"""Residual-risk check: a second, different detector (CenterFace) on the masked output; remask | flag | fail."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from anon_core.audit import AuditRecord, read_manifest
from anon_core.config import AnonConfig
from anon_core.detections import Detections
from anon_core.detectors import Detector, register_detector
from anon_core.pipeline import Anonymizer
from anon_core.runner import run
from anon_core.weights import ModelInfo

from .conftest import ASTRONAUT_FACE


class _Blind(Detector):
    """A primary detector that misses everything: whatever the residual check finds is a real residual."""

    classes = ("face",)
    threshold = 0.5

    def __init__(self, **_):
        pass

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo("blind", "0", "0" * 64, "tests")]

    def predict(self, frames, min_score, work):
        return [Detections.empty() for _ in frames]


@register_detector("test_blind")
def _blind(**params) -> _Blind:
    return _Blind(**params)


def _cfg(action: str = "remask", primary: str = "test_blind", **residual) -> AnonConfig:
    detectors = {"face": {"name": primary, "params": {} if primary == "test_blind" else
                          {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}}
    return AnonConfig.from_dict({"policy": "faces", "detectors": detectors,
                                 "residual": {"enabled": True, "action": action, **residual}})


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _face_change(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1, x2, y2 = ASTRONAUT_FACE
    return float(np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2].astype(int)).mean())


def test_remask_catches_what_the_primary_missed(astronaut):
    rec = AuditRecord()
    out = Anonymizer(_cfg("remask")).process_bytes(_png(astronaut), rec)
    assert rec.status == "ok" and rec.detections == {}
    res = rec.extra["residual"]
    assert res["found"] == {"face": 1} and res["remasked"] == 1 and res["frames_checked"] == 1
    assert res["model"]["name"].startswith("centerface") and len(res["model"]["weights_sha256"]) == 64
    assert _face_change(astronaut, np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))) > 15


def test_flag_publishes_and_counts(astronaut):
    rec = AuditRecord()
    out = Anonymizer(_cfg("flag")).process_bytes(_png(astronaut), rec)
    assert rec.status == "ok" and rec.extra["residual"]["found_total"] == 1 and rec.extra["residual"]["remasked"] == 0
    assert _face_change(astronaut, np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))) < 3


def test_fail_publishes_nothing(astronaut, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(astronaut))
    s = run(str(tmp_path / "in"), str(tmp_path / "out"), _cfg("fail"), progress=False)
    r = s.records[0]
    assert r.status == "failed" and r.error_code == "residual_risk" and "1 face" in r.error
    assert not (tmp_path / "out" / "a.png").exists()


def test_clean_output_has_zero_residuals_in_manifest(astronaut, tmp_path):
    """With the real primary (RetinaFace) the blurred face is not found again; the count is in the manifest."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(astronaut))
    s = run(str(tmp_path / "in"), str(tmp_path / "out"), _cfg("fail", primary="face"), progress=False)
    assert s.ok == 1, s.records[0].error
    row = read_manifest(s.manifest).to_pylist()[0]
    assert json.loads(row["extra_json"])["residual"]["found_total"] == 0


def test_video_sampled_frames(tmp_path):
    from tests.video_helpers import make_clip, read_video

    src = tmp_path / "in"
    src.mkdir()
    clip = make_clip(str(src / "v.mp4"), "mp4", n_frames=12, size=(192, 144), face=72, fps=12, audio=False)
    s = run(str(src), str(tmp_path / "out"), _cfg("remask", video_every_s=0.5), progress=False)
    r = s.records[0]
    assert r.status == "ok", r.error
    res = r.extra["residual"]
    assert res["every_n_frames"] == 6 and res["frames_checked"] == 2  # frames 0 and 6
    assert res["found"].get("face", 0) >= 1 and res["remasked"] == res["found_total"]
    before, _, _ = read_video(clip.path)
    after, _, _ = read_video(str(tmp_path / "out" / "v.mp4"))

    def change(i: int) -> float:
        x1, y1, x2, y2 = (int(v) for v in clip.boxes[i][0])
        return float(np.abs(before[i][y1:y2, x1:x2].astype(int) - after[i][y1:y2, x1:x2].astype(int)).mean())

    assert max(change(0), change(6)) > 10  # a checked frame was re-masked before encoding
    assert change(3) < 6  # unchecked frames are what the (blind) primary made of them: the flag is the sampling


def test_residual_detector_must_cover_a_policy_class():
    cfg = _cfg()
    cfg.residual.detector.name = "nanodet_person"
    cfg.residual.detector.params = {}
    with pytest.raises(ValueError, match="none of which the policy masks"):
        Anonymizer(cfg)


def test_residual_settings_from_cli_keys():
    from jobs.config import load_config

    cfg = load_config(["residual.enabled=true", "residual.action=flag", "residual.video_every_s=2"])
    assert cfg.residual.enabled and cfg.residual.action == "flag" and cfg.residual.video_every_s == 2
    assert cfg.residual.detector.params["model"] == "centerface"
    with pytest.raises(ValueError):
        load_config(["residual.action=maybe"])
    with pytest.raises(ValueError):
        load_config(["on_analysis_error=ignore"])
