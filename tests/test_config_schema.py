"""One config schema: every leaf key of AnonConfig works as `--set k=v` and as a Hydra override of the Ray job,
unknown keys and bad values are one-line errors naming the key (CLI, watch, serve, Ray job)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from anon_core.config import AnonConfig, DetectorSpec
from anon_core.detectors import register_detector
from anon_core.masking import MaskOperator, register_operator
from anon_core.schema import SchemaError, build, hints, leaves, to_data

ROOT = Path(__file__).resolve().parent.parent


# A detector and a mask operator that take any parameters: the walk renames `name`/`operator` to them, so the
# other keys of the same spec stay valid.
@register_detector("test_any_params")
def _any_detector(**params):
    raise AssertionError("never built: the key walk only builds configs")


@register_operator("test_any_op")
class _AnyOp(MaskOperator):
    def __init__(self, **params) -> None:
        self.kw = params


EMPTY_LISTS = {"classes": ["face"], "audio.mute_ranges": [[1.0, 2.0]]}


def _hint_at(path: str):
    """The schema type of a leaf key (None inside free-form dicts such as detector params)."""
    tp: typing.Any = AnonConfig
    for part in path.split("."):
        if dataclasses.is_dataclass(tp):
            tp = hints(tp).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def changed(path: str, value):
    """A valid value for `path` that differs from `value` (the default)."""
    hint = _hint_at(path)
    leaf = path.rsplit(".", 1)[-1]
    if typing.get_origin(hint) is typing.Literal:
        return next(c for c in typing.get_args(hint) if c != value)
    if leaf == "name" and path.startswith(("detectors.", "residual.detector")):
        return "test_any_params"
    if leaf == "operator" and path.startswith("masks."):
        return "test_any_op"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return {"device": "cpu"}.get(path, value + "_b" if value else "b")
    if isinstance(value, dict):  # an empty free-form dict (encoder options)
        return {"g": "1"}
    if isinstance(value, list | tuple):
        if not value:
            return EMPTY_LISTS.get(path, ["x"])
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return [*value[:-1], value[-1] + 1]
        return list(value[:-1]) if len(value) > 1 else [*value, "x"]
    raise AssertionError(f"no changed value for {path}={value!r}")


def override(value) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override(v)}" for k, v in value.items()) + "}"
    return "[" + ",".join(override(v) for v in value) + "]"


def get(cfg: AnonConfig, path: str):
    node = to_data(cfg)
    for part in path.split("."):
        node = node[part]
    return node


LEAVES = list(leaves(AnonConfig()))


def test_walk_covers_the_schema():
    keys = {k for k, _ in LEAVES}
    assert len(keys) == len(LEAVES) > 100
    assert {"policy", "video.detect_every_k", "video.encoders.webm.options.cpu-used", "audio.mute_ranges",
            "detectors.face.params.threshold", "residual.detector.params.model", "masks.face.params.strength",
            "limits.asset_timeout_s", "metadata.keep_gps", "image.jpeg_quality"} <= keys
    # every dataclass field is reached (a field holding a dict or list is a leaf or has leaves below it)
    for cls_path, cls in [("", AnonConfig), ("video", type(AnonConfig().video)), ("audio", type(AnonConfig().audio))]:
        for name in hints(cls):
            prefix = f"{cls_path}.{name}" if cls_path else name
            assert any(k == prefix or k.startswith(prefix + ".") for k in keys), prefix


@pytest.mark.parametrize("path,default", LEAVES, ids=[k for k, _ in LEAVES])
def test_every_leaf_key_through_set_and_hydra(path, default):
    from jobs.anonymize import JOB_KEYS
    from jobs.cli import build_parser
    from jobs.config import anon_config, compose_dict, load_config

    new = changed(path, default)
    item = f"{path}={override(new)}"
    if new == {"g": "1"}:  # a key added to an empty free-form mapping (encoder options): Hydra's `+key=value`
        item = f"+{path}.g='1'"
    want = to_data(new)
    # 1. `anon anonymize ... --set k=v` (the CLI's parser and loader)
    args = build_parser().parse_args(["anonymize", "in", "-o", "out", "--set", item])
    via_set = load_config(args.set)
    assert get(via_set, path) == want
    # 2. the Ray job's Hydra override (conf/job.yaml composed as `python jobs/anonymize.py ... k=v`)
    via_hydra = anon_config(compose_dict(["input=a", "output=b", item], config_name="job"), JOB_KEYS)
    assert get(via_hydra, path) == want
    assert via_set == via_hydra
    # every key is part of what the audit/resume hash covers
    assert via_set.hash() != AnonConfig().hash()


def test_from_dict_merges_and_replaces():
    cfg = AnonConfig.from_dict({"video": {"encoders": {"webm": {"crf": 30}}},
                                "masks": {"face": {"operator": "pixelate", "params": {"blocks": 10}}},
                                "detectors": {"text": None}})
    assert cfg.video.encoders["webm"].crf == 30 and cfg.video.encoders["webm"].codec == "libvpx-vp9"
    assert cfg.masks["face"].params == {"blocks": 10} and cfg.masks["face"].shape == "ellipse"  # params replaced
    assert "text" not in cfg.detectors and "plate" in cfg.detectors
    whole = AnonConfig.from_dict({**to_data(cfg), "detectors": {"face": to_data(cfg.detectors["face"])}},
                                 complete=True)
    assert list(whole.detectors) == ["face"] and whole.masks == cfg.masks
    assert AnonConfig.from_dict(to_data(cfg), complete=True) == cfg
    assert isinstance(cfg.video.allowed_stream_tags, tuple)


@pytest.mark.parametrize("data,key,words", [
    ({"polcy": "full"}, "polcy", "did you mean 'policy'"),
    ({"video": {"detect_evry_k": 3}}, "video.detect_evry_k", "did you mean 'video.detect_every_k'"),
    ({"detectors": {"face": {"params": {"treshold": 0.3}}}}, "detectors.face.params.treshold",
     "not a parameter of detector 'face' (did you mean 'threshold'"),
    ({"detectors": {"face": {"params": {"threshold": "high"}}}}, "detectors.face.params.threshold", "a number"),
    ({"masks": {"face": {"params": {"strenght": 0.3}}}}, "masks.face.params.strenght", "did you mean 'strength'"),
    ({"masks": {"face": {"params": {"strength": 9}}}}, "masks.face.params", "blur.strength must be in"),
    ({"masks": {"face": {"shape": "circle"}}}, "masks.face.shape", "one of ellipse, box, silhouette"),
    ({"residual": {"action": "maybe"}}, "residual.action", "one of remask, flag, fail"),
    ({"video": {"batch_size": "8"}}, "video.batch_size", "an integer"),
    ({"video": {"detect_every_k": 0}}, "video.detect_every_k", ">= 1"),
    ({"audio": {"mute_ranges": [[2, 1]]}}, "audio.mute_ranges[0]", "bad range"),
    ({"metadata": {"keep_gps": "yes"}}, "metadata.keep_gps", "true/false"),
    ({"detectors": {"face": {"name": "fcae"}}}, "detectors.face.name", "unknown detector 'fcae'"),
    ({"classes": "face"}, "classes", "expected"),
])
def test_bad_data_names_the_key(data, key, words):
    with pytest.raises(SchemaError) as err:
        AnonConfig.from_dict(data)
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value)


def test_direct_construction_checks_choices():
    with pytest.raises(ValueError, match="on_analysis_error"):
        AnonConfig(on_analysis_error="ignore")
    with pytest.raises(ValueError, match="treshold"):
        DetectorSpec("face", {"treshold": 0.3})
    assert build(DetectorSpec, {"name": "plate"}).params == {}


def test_models_section_follows_the_schema():
    """`models.allow_licenses` is a key exactly when the schema has a `models` section."""
    from jobs.config import load_config

    if "models" in hints(AnonConfig):
        assert load_config(["models.allow_licenses=[MIT]"]).models.allow_licenses == ["MIT"]
    else:
        with pytest.raises(SchemaError, match="models.allow_licenses: unknown key"):
            load_config(["models.allow_licenses=[MIT]"])


def test_group_options_replace_the_node():
    from jobs.config import compose_dict, group_options, load_config

    assert {"hybrid", "centerface", "realtime", "retinaface", "video_fast"} <= set(group_options("detector"))
    assert {"blur", "pixelate", "fill", "avatar"} <= set(group_options("mask"))
    centerface = load_config(["detector=centerface"]).detectors["face"].params
    assert "upscale_model" not in centerface  # not merged with the default (hybrid) parameters
    assert load_config(["mask=pixelate"]).masks["face"].params == {"blocks": 8}
    fast = load_config(["video.detect_every_k=2", "detector=video_fast"])
    assert fast.video.detect_every_k == 2 and fast.detectors["face"].params["scales"] == [1.0]
    assert load_config(["~detectors.text"]).detectors.keys() == {"face", "plate", "person"}
    added = load_config(["+detectors.mine={name: plate, params: {threshold: 0.7}}"])
    assert added.detectors["mine"] == DetectorSpec("plate", {"threshold": 0.7})
    job = compose_dict(["input=a", "output=b", "video.detect_every_k=2", "detector=video_fast"], config_name="job")
    assert job["video"]["detect_every_k"] == 2 and job["job"]["retries"] >= 0


def test_conf_holds_only_differences():
    """conf/config.yaml has no keys of its own; group options differ from the default they replace."""
    import yaml

    from jobs.config import conf_dir

    top = yaml.safe_load((Path(conf_dir()) / "config.yaml").read_text())
    assert set(top) == {"defaults"}
    default_face = to_data(AnonConfig().detectors["face"])
    for f in (Path(conf_dir()) / "detector").glob("*.yaml"):
        assert yaml.safe_load(f.read_text()) != default_face, f.name


# -- one line, non-zero exit, from the real entry points


def _run(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANON_API_KEYS": "test-key"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


BAD_SETS = [("polcy=full", "polcy: unknown key (did you mean 'policy'?)"),
            ("no.such.key=1", "no.such.key: unknown key"),
            ("detectors.face.params.treshold=0.3", "detectors.face.params.treshold: unknown key"),
            ("+detectors.face.params.treshold=0.3", "detectors.face.params.treshold: not a parameter of detector"),
            ("video.detect_every_k=abc", "video.detect_every_k:"),
            ("residual.action=maybe", "residual.action: must be one of remask, flag, fail; got 'maybe'"),
            ("detector=video_fst", "detector: unknown option 'video_fst' (did you mean 'video_fast'?)")]
if "models" not in hints(AnonConfig):
    BAD_SETS.append(("models.allow_licenses=[MIT]", "models.allow_licenses: unknown key"))


@pytest.mark.parametrize("item,message", BAD_SETS, ids=[i for i, _ in BAD_SETS])
def test_cli_set_errors_are_one_line(tmp_path, item, message):
    (tmp_path / "in").mkdir()
    p = _run("-m", "jobs.cli", "anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--set", item)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and message in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["watch", "serve", "validate"])
def test_other_commands_reject_unknown_keys(tmp_path, command):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "annotations.jsonl").write_text("")  # an (empty) annotated set for validate
    args = {"watch": [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--once"],
            "serve": ["--port", "0"],
            "validate": ["--data", str(tmp_path / "in"), "-o", str(tmp_path / "v"), "--classes", "face",
                         "--no-mlflow"]}[command]
    p = _run("-m", "jobs.cli", command, *args, "--set", "polcy=full")
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and "polcy: unknown key" in lines[0], p.stderr


@pytest.mark.parametrize("item", ["polcy=full", "+polcy=full"])
def test_ray_job_rejects_unknown_keys(tmp_path, item):
    p = _run("jobs/anonymize.py", f"input={tmp_path}", f"output={tmp_path / 'out'}", item)
    lines = p.stderr.strip().splitlines()
    want = "anon job: bad configuration: polcy: unknown key (did you mean 'policy'?)"
    assert p.returncode == 2 and lines == [want], p.stderr


def test_ray_job_takes_section_overrides_and_groups(tmp_path):
    """Issue 14's command: `python jobs/anonymize.py input=IN output=OUT video.detect_every_k=2 detector=video_fast`."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from jobs.config import load_config

    (tmp_path / "in").mkdir()
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(tmp_path / "in/a.png")
    p = _run("jobs/anonymize.py", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
             "video.detect_every_k=2", "detector=video_fast", "job.progress=false", "job.actors=1",
             "job.num_cpus_local=1", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["ok"] == 1
    rows = pq.read_table(summary["manifest"]).to_pylist()
    want = load_config(["video.detect_every_k=2", "detector=video_fast"]).hash()
    assert [r["config_hash"] for r in rows] == [want]
