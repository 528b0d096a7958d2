"""Third-party detectors and mask operators, found through Python entry points.

A package adds a detector or an operator without editing anon by declaring an entry point, e.g. in
its pyproject.toml::

    [project.entry-points."anon.detectors"]
    my_faces = "my_pkg.detector:make"        # a callable(**params) -> anon_core.detectors.Detector

    [project.entry-points."anon.masks"]
    my_mosaic = "my_pkg.mask:MosaicOperator"  # a MaskOperator subclass, called with the mask's params

and is then configured by that name like a built-in. Entry points are listed once per group, the first
time a name is not found among the built-ins, and each one is imported only when first used.
"""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any

_LOCK = threading.Lock()
_GROUPS: dict[str, dict[str, EntryPoint]] = {}
_LOADED: dict[tuple[str, str], Any] = {}


def _group(group: str) -> dict[str, EntryPoint]:
    with _LOCK:
        if group not in _GROUPS:
            _GROUPS[group] = {ep.name: ep for ep in entry_points(group=group)}
        return _GROUPS[group]


def plugin(group: str, name: str) -> Any | None:
    """The object entry point `name` of `group` points to (imported on first use), or None."""
    ep = _group(group).get(name)
    if ep is None:
        return None
    key = (group, name)
    if key not in _LOADED:
        try:
            _LOADED[key] = ep.load()
        except Exception as exc:  # a broken plugin names itself instead of a bare ImportError deep inside
            raise ValueError(f"{group} entry point {name!r} ({ep.value}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc
    return _LOADED[key]


def plugin_names(group: str) -> list[str]:
    return sorted(_group(group))


def refresh() -> None:
    """Forget the entry points listed so far (after installing a package into a running process)."""
    with _LOCK:
        _GROUPS.clear()
        _LOADED.clear()
