"""Hydra side of the one config schema: anon_core/config.py's dataclasses as structured configs, conf/ over them.

`--set key=value` (CLI anonymize/validate/watch/serve) and the Ray job's command-line overrides are the same
Hydra overrides, composed by `compose_dict` over the `anon_schema` node registered here; the plain result goes
through the core's converter (`AnonConfig.from_dict`), which rejects unknown keys and bad values. conf/ holds only
what differs from the dataclass defaults, plus the groups `detector/` and `mask/` (their default options, `hybrid`
and `blur`, are the dataclass defaults of `detectors.face` and `masks.face`, registered here).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anon_core.config import AnonConfig
from anon_core.schema import SchemaError, hints, is_dataclass_type, suggest, to_data

GROUPS = ("detector", "mask")
SCHEMA_NAME = "anon_schema"
# group -> (default option, where it goes): the options of these groups replace that node whole.
GROUP_NODES = {"detector": ("hybrid", ("detectors", "face")), "mask": ("blur", ("masks", "face"))}


def conf_dir() -> str:
    return os.environ.get("ANON_CONF_DIR") or str(Path(__file__).resolve().parent.parent / "conf")


# -- structured configs


def _omegaconf_hint(hint: Any) -> Any:
    """An annotation OmegaConf accepts for `hint` (it has no Literal or general Union; the core checks those)."""
    if is_dataclass_type(hint):
        return _mirror(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return type(args[0])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _omegaconf_hint(rest[0])
            return inner | None if type(None) in args and inner is not Any else inner
        return Any
    if origin is dict or hint is dict:
        # Entries that are dataclasses stay untyped here: OmegaConf cannot add a typed entry from an override
        # (`+detectors.mine={name: yolo}`); the core's converter checks them.
        return dict[str, _omegaconf_hint(args[1]) if args and not is_dataclass_type(args[1]) else Any]
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return list[_omegaconf_hint(item)]
    return hint if hint in (bool, int, float, str) else Any


@functools.cache
def _mirror(cls: type) -> type:
    """A dataclass with `cls`'s fields and OmegaConf-compatible annotations (values come from `cls`'s defaults)."""
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = _omegaconf_hint(hints(cls)[f.name])
        if is_dataclass_type(hint):
            default = dataclasses.field(default_factory=hint)
        elif f.default is not dataclasses.MISSING and not isinstance(f.default, list | dict | tuple):
            default = dataclasses.field(default=f.default)
        else:
            origin = typing.get_origin(hint)
            default = dataclasses.field(default_factory=dict if origin is dict else list) \
                if origin in (dict, list) else dataclasses.field(default=None)
        fields.append((f.name, hint, default))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def schema_node() -> tuple[dict, dict[str, dict]]:
    """(the `anon_schema` node, the groups' default options): AnonConfig's defaults, typed per section.

    The top level stays an open mapping so that conf/job.yaml can add the Ray job's own keys; each section
    (video, audio, residual...) is a structured config that type-checks overrides (the core's converter then
    checks everything again, with the same rules for every caller). The group nodes are left out: their options
    replace them whole (a merge would mix one detector's parameters into another's).
    """
    data = to_data(AnonConfig())
    group_defaults = {}
    for group, (_option, (section, key)) in GROUP_NODES.items():
        group_defaults[group] = data[section].pop(key)
    node: dict[str, Any] = {}
    for name, hint in hints(AnonConfig).items():
        typed = _omegaconf_hint(hint)
        if is_dataclass_type(typed):
            node[name] = OmegaConf.merge(OmegaConf.structured(typed), data[name])
        else:
            node[name] = data[name]
    return node, group_defaults


_registered = False


def register() -> None:
    """Register the schema and the groups' default options with Hydra's ConfigStore (once per process)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    node, group_defaults = schema_node()
    cs.store(name=SCHEMA_NAME, node=node)
    for group, (option, (section, key)) in GROUP_NODES.items():
        cs.store(group=group, name=option, node=group_defaults[group], package=f"{section}.{key}")
    _registered = True


# -- composing


def compose_dict(overrides: list[str] | None = None, config_name: str = "config") -> dict:
    """conf/<config_name>.yaml over the schema with Hydra overrides, as plain data; errors are one line."""
    register()
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item and not item.startswith("~"):
            raise SchemaError(item, "expected key=value")
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _one_line(exc) from None
    return OmegaConf.to_container(cfg, resolve=True)


def anon_config(d: dict, extra_keys: tuple[str, ...] = ()) -> AnonConfig:
    """The AnonConfig of a composed config; keys neither in the schema nor in `extra_keys` are errors."""
    d = {k: v for k, v in d.items() if k not in extra_keys}
    defaults = to_data(AnonConfig())
    for _group, (_option, (section, _key)) in GROUP_NODES.items():
        # the group merged its node in after the schema's entries: restore the schema's order (detectors run,
        # and the audit lists them, in this order)
        if isinstance(d.get(section), dict):
            order = [k for k in defaults[section] if k in d[section]]
            d[section] = {k: d[section][k] for k in [*order, *(k for k in d[section] if k not in order)]}
    return AnonConfig.from_dict(d, complete=True)


def load_config(sets: list[str] | None = None) -> AnonConfig:
    """`--set key=value` items (Hydra overrides: `key=value`, `group=option`, `+new.key=value`, `~key`)."""
    return anon_config(compose_dict(sets or []))


def _one_line(exc: Exception) -> SchemaError:
    """Hydra/OmegaConf's multi-line messages as one SchemaError naming the key."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(c) for c in chain)
    m = re.search(r"Could not (?:override|append to) '([^']+)'|'([^']+)' does not exist", text)
    full_key = next((str(c.full_key) for c in chain if getattr(c, "full_key", None)), "")
    key = (m.group(1) or m.group(2)) if m else full_key
    if full_key.startswith(key + "."):  # a mapping assigned to a key: the innermost key is the unknown one
        key = full_key
    if re.search(r"not in struct|Key '[^']+' not in '|Key not found|does not exist", text):
        return SchemaError(key, "unknown key" + _suggest_key(key))
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        return SchemaError(group, f"unknown option {option!r}{suggest(option, group_options(group))}")
    inner = [c for c in chain if getattr(c, "full_key", None)] or chain
    first = next((line.strip() for line in str(inner[-1]).splitlines() if line.strip()), type(exc).__name__)
    return SchemaError(key, first)


def _suggest_key(key: str) -> str:
    """A close match for the first part of `key` the schema does not have (from AnonConfig's defaults)."""
    here: Any = to_data(AnonConfig())
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(here, dict) or part not in here:
            known = [str(k) for k in here] if isinstance(here, dict) else []
            hint = suggest(part, known, ".".join(parts[:i])) if known else ""
            if i < len(parts) - 1:
                return f" (no {'.'.join(parts[:i + 1])!r}{hint})"
            if "did you mean" not in hint and _open_mapping(parts[:i]):
                hint += f"; to add a key to this mapping: +{key}=VALUE"
            return hint
        here = here[part]
    return ""


def _open_mapping(parts: list[str]) -> bool:
    """Whether the node at `parts` is a dict in the schema (free-form params/options, or named entries)."""
    tp: Any = AnonConfig
    for part in parts:
        if is_dataclass_type(tp):
            tp = hints(tp).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return tp is Any
        if typing.get_origin(tp) in (Union, types.UnionType):
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), Any)
    return typing.get_origin(tp) is dict or tp is dict


def group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml plus the default registered from the schema."""
    files = [p.stem for p in (Path(conf_dir()) / group).glob("*.yaml")]
    return sorted({*files, *([GROUP_NODES[group][0]] if group in GROUP_NODES else [])})
