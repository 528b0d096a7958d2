"""Compose conf/ with Hydra (the CLI's --set and the jobs' overrides share these keys)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anon_core.config import AnonConfig

GROUPS = ("detector", "mask")


def conf_dir() -> str:
    return os.environ.get("ANON_CONF_DIR") or str(Path(__file__).resolve().parent.parent / "conf")


def to_overrides(sets: list[str]) -> list[str]:
    """`--set k=v` → Hydra overrides: group choices as they are, every other key add-or-override."""
    out = []
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key = item.split("=", 1)[0].lstrip("+~")
        out.append(item if key in GROUPS or item[0] in "+~" else f"++{item}")
    return out


def compose_dict(overrides: list[str] | None = None, config_name: str = "config") -> dict:
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def load_config(sets: list[str] | None = None) -> AnonConfig:
    d = compose_dict(to_overrides(sets or []))
    return AnonConfig.from_dict({k: v for k, v in d.items() if k in AnonConfig.__dataclass_fields__})
