"""Command-line flags for settings dataclasses without repeating their defaults in argparse.

Flags default to None ("not given"); `given(args, FLAGS)` returns only what was given, for the dataclass to
fill the rest from its own defaults; `--help` reads those defaults from the dataclass when it is printed
(the settings module is imported only then, so building the parser stays cheap).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Flag:
    field: str  # the dataclass field the flag sets
    to_field: Callable[[Any], Any] = lambda v: v  # flag value -> field value (e.g. MB -> bytes)
    to_flag: Callable[[Any], Any] = lambda v: v  # field default -> what --help shows


def given(args: argparse.Namespace, flags: dict[str, Flag]) -> dict[str, Any]:
    """{field: value} for the flags given on the command line."""
    return {f.field: f.to_field(getattr(args, dest)) for dest, f in flags.items() if getattr(args, dest) is not None}


def defaults_formatter(settings: str, flags: dict[str, Flag]) -> type[argparse.HelpFormatter]:
    """A help formatter that appends "(default X)" from `settings` ("module:Class") to each mapped flag."""

    class SchemaDefaults(argparse.HelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            flag = flags.get(action.dest)
            if flag is None:
                return text
            module, name = settings.split(":")
            cls = getattr(importlib.import_module(module), name)
            f = {x.name: x for x in dataclasses.fields(cls)}[flag.field]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            return f"{text} (default {flag.to_flag(default)})" if default is not None else text

    return SchemaDefaults
