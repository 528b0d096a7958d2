"""License-aware model registry: the gate refuses disallowed models before loading, audit rows and the DPIA report
name every model's license, and the opt-in YOLO plate model is chosen only when AGPL-3.0 is allowed."""

from __future__ import annotations

import io
import logging

import pytest
from PIL import Image

from anon_core import licenses
from anon_core.audit import AuditRecord, read_manifest, write_manifest
from anon_core.config import AnonConfig, DetectorSpec, ModelsSettings
from anon_core.licenses import PERMISSIVE, ModelLicenseError, gate
from anon_core.pipeline import Anonymizer

FAST_FACE = {"name": "face", "params": {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}


def test_default_allows_permissive_only():
    cfg = AnonConfig()
    assert cfg.models.allow_licenses == list(PERMISSIVE)
    assert "AGPL-3.0" not in cfg.models.allow_licenses and "MIT" in cfg.models.allow_licenses
    assert AnonConfig.from_dict({"models": {"allow_licenses": ["MIT"]}}).models.allow_licenses == ["MIT"]


def test_every_card_names_source_license_input_and_a_card_file():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "models"
    for card in licenses.CARDS.values():
        assert card.package and card.input and card.accuracy
        assert card.license in (*PERMISSIVE, "AGPL-3.0", "GPL-3.0-or-later"), card
        assert (root / card.card).exists(), card.card
        assert card.license in (root / card.card).read_text(), f"{card.card} does not state {card.license}"


def test_user_yolo_weights_refused_by_default(tmp_path):
    """ultralytics-trained weights are AGPL-3.0: refused with one clear line, before anything is loaded."""
    weights = tmp_path / "missing.pt"  # never opened: the gate comes first
    cfg = AnonConfig.from_dict({"policy": "default", "detectors": {
        "face": FAST_FACE, "plate": {"name": "yolo", "params": {"weights": str(weights), "classes": {0: "plate"}}}}})
    with pytest.raises(ModelLicenseError) as exc:
        Anonymizer(cfg)
    msg = str(exc.value)
    assert "AGPL-3.0" in msg and "models.allow_licenses" in msg and "'plate'" in msg and "\n" not in msg
    # a deployer who declares their weights' license is checked against that instead
    cfg.detectors["plate"].params["license"] = "MIT"
    assert gate(cfg.detectors, cfg.models, ["face", "plate"])["plate"].name == "yolo"


def test_narrow_allow_list_refuses_a_builtin_model():
    cfg = AnonConfig.from_dict({"policy": "default", "detectors": {"face": FAST_FACE, "plate": {"name": "plate"}},
                                "models": {"allow_licenses": ["MIT"]}})
    with pytest.raises(ModelLicenseError, match="licensed Apache-2.0"):
        Anonymizer(cfg)
    # the same list is fine when the policy does not ask for plates (unused detectors are never built) and no
    # Apache-2.0 voice model is configured
    cfg.policy, cfg.audio.speakers = "faces", "single"
    assert list(Anonymizer(cfg).detectors) == ["face"]


def test_plate_model_choice_follows_the_allow_list(tmp_path, monkeypatch, caplog):
    spec = {"plate": DetectorSpec("plate", {"threshold": 0.5, "threads": 1})}
    monkeypatch.setenv("ANON_MODEL_DIR", str(tmp_path))
    agpl = ModelsSettings(allow_licenses=[*PERMISSIVE, "AGPL-3.0"])
    licenses._said.clear()
    with caplog.at_level(logging.WARNING, logger="anon_core.licenses"):
        # allowed but not built: the documented fallback, said once
        assert gate(spec, agpl, ["plate"])["plate"].name == "plate"
        assert gate(spec, agpl, ["plate"])["plate"].name == "plate"
    assert sum("not built" in r.message for r in caplog.records) == 1
    (tmp_path / "plate_yolo.onnx").write_bytes(b"")
    chosen = gate(spec, agpl, ["plate"])["plate"]
    assert chosen.name == "plate_yolo" and chosen.params == {"threads": 1}  # PP-OCR's threshold does not carry over
    assert gate(spec, ModelsSettings(), ["plate"])["plate"].name == "plate"  # permissive default
    assert gate(spec, ModelsSettings(allow_licenses=agpl.allow_licenses, plate="ppocr"), ["plate"])["plate"].name \
        == "plate"
    with pytest.raises(ModelLicenseError, match="plate_yolo"):
        gate(spec, ModelsSettings(plate="yolo"), ["plate"])
    with pytest.raises(ValueError, match="plate"):
        ModelsSettings(plate="best")


def test_audit_row_and_report_name_licenses(tmp_path, astronaut):
    from anon_core.storage import filesystem
    from jobs.report import write_report

    cfg = AnonConfig.from_dict({"policy": "default", "detectors": {
        "face": FAST_FACE, "plate": {"name": "plate", "params": {"threads": 1}}}})
    anon = Anonymizer(cfg)
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "PNG")
    rec = AuditRecord(run_id="r1", input_uri="mem://a.png", relative_path="a.png")
    anon.process_bytes(buf.getvalue(), rec)
    assert rec.status == "ok", rec.error
    lic = {m["name"]: m["license"] for m in rec.models}
    assert lic["retinaface-mnet025-fp32"] == "MIT" and lic["ppocrv4-det"] == "Apache-2.0"
    assert lic["nanodet-coco"] == "Apache-2.0" and lic["ppocrv4-rec"] == "Apache-2.0"
    fs, _ = filesystem(str(tmp_path))
    path = str(tmp_path / "m.parquet")
    write_manifest([rec], fs, path)
    row = read_manifest(path).to_pylist()[0]
    assert {m["name"]: m["license"] for m in row["models"]} == lic
    md = open(write_report([path], str(tmp_path / "rep"))["markdown"]).read()
    assert "| license |" in md.replace("| license | weights sha256", "| license |")
    assert "| retinaface-mnet025-fp32 |" in md and "| MIT |" in md and "| Apache-2.0 |" in md


def test_report_fills_licenses_of_older_rows():
    from jobs.report import _license

    assert _license({"name": "centerface-fp32"}) == "MIT"
    assert _license({"name": "yolo:best.pt"}) == "AGPL-3.0"
    assert _license({"name": "something-else"}) == "NOASSERTION"
    assert _license({"name": "x", "license": "BSD-3-Clause"}) == "BSD-3-Clause"


def test_unknown_detector_is_not_refused(caplog):
    from anon_core.detectors import register_detector

    @register_detector("license_test_plugin")
    def _plugin(**params):  # the deployment's own detector: no model card
        raise AssertionError("not built by the gate")

    spec = {"x": DetectorSpec("license_test_plugin", {})}
    licenses._said.clear()
    with caplog.at_level(logging.WARNING, logger="anon_core.licenses"):
        assert gate(spec, ModelsSettings(), ["face"])["x"].name == "license_test_plugin"
    assert "no model card" in caplog.text


def test_allow_list_from_the_command_line_syntax():
    from jobs.config import load_config

    cfg = load_config(["models.allow_licenses=[MIT,Apache-2.0,AGPL-3.0]", "models.plate=ppocr"])
    assert cfg.models.allow_licenses == ["MIT", "Apache-2.0", "AGPL-3.0"] and cfg.models.plate == "ppocr"


def test_voice_models_are_gated_too():
    cfg = AnonConfig.from_dict({"policy": "faces", "detectors": {"face": FAST_FACE},
                                "models": {"allow_licenses": ["MIT"]}})
    with pytest.raises(ModelLicenseError, match="resemblyzer"):
        Anonymizer(cfg)
    cfg.audio.speakers = "single"  # silero (MIT) only
    assert list(Anonymizer(cfg).detectors) == ["face"]


def test_resynth_needs_its_gpl_synthesizer_allowed():
    from anon_core.licenses import audio_models, check_audio

    cfg = AnonConfig.from_dict({"audio": {"method": "resynth", "speakers": "single"}})
    assert audio_models(cfg.audio) == ["silero_vad", "whisper_base", "espeak_ng"]  # no diarization
    with pytest.raises(ModelLicenseError, match="espeak_ng.*GPL-3.0-or-later"):
        check_audio(cfg.audio, cfg.models.allow_licenses)  # the permissive default refuses it
    check_audio(cfg.audio, [*cfg.models.allow_licenses, "GPL-3.0-or-later"])
