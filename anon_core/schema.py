"""One type-directed converter from plain data (YAML, JSON, Hydra containers) to the config dataclasses.

The dataclasses and their type hints are the schema: this module walks them, so adding a field to a settings
class is all it takes for `--set`, Hydra overrides and `AnonConfig.from_dict` to know the key. Rules:

- a mapping given for a dataclass sets the fields it names; the others keep their current (default) values;
- a mapping given for `dict[str, SomeDataclass]` updates entries (each merged over the entry of the same key,
  or over the class defaults for a new key); `None` as an entry removes it; with `complete=True` (a whole
  config, as Hydra composes it) the mapping is the whole dict;
- anything else (scalars, lists, tuples, free-form `dict[str, Any]` such as detector params) is replaced whole;
- unknown keys, wrong types and values outside a `Literal`/`Enum` are a `SchemaError` naming the key.

No Hydra or OmegaConf here: `jobs/config.py` composes conf/ and hands the plain result to `build`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, Union

T = TypeVar("T")


class SchemaError(ValueError):
    """A bad configuration key or value; `str()` is one line naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}" if key else problem)

    def under(self, prefix: str) -> SchemaError:
        return SchemaError(join(prefix, self.key), self.problem)


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def suggest(key: str, known: Sequence[str], prefix: str = "") -> str:
    """' (did you mean 'x'?)' for a close match, else the known keys."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {join(prefix, close[0])!r}?)"
    return f"; known: {', '.join(sorted(known))}" if known else ""


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (string annotations evaluated once per class)."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls) if f.init}


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# -- building


def build(cls: type[T], data: Any, *, base: T | None = None, path: str = "", complete: bool = False) -> T:
    """A `cls` instance from `data` (a mapping or an instance), over `base` (default: the class defaults)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SchemaError(path, f"expected a mapping, got {_show(data)}")
    fields = hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = str(unknown[0])
        raise SchemaError(join(path, k), "unknown key" + suggest(k, list(fields), path))
    current = base if base is not None else None
    kwargs: dict[str, Any] = {}
    for name, hint in fields.items():
        if name in data:
            now = getattr(current, name) if current is not None else _default(cls, name)
            kwargs[name] = convert(hint, data[name], now, join(path, name), complete)
        elif current is not None:
            kwargs[name] = getattr(current, name)
    try:
        return cls(**kwargs)
    except SchemaError as exc:
        raise exc.under(path) from None
    except (TypeError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # "vault.dir must be ..." raised inside `vault`: name the field instead of repeating the section
        m = re.match(rf"{re.escape(path.rsplit('.', 1)[-1])}\.(\w+):? (.*)", text) if path else None
        raise (SchemaError(join(path, m.group(1)), m.group(2)) if m else SchemaError(path, text)) from None


def _default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def convert(hint: Any, value: Any, current: Any = None, path: str = "", complete: bool = False) -> Any:
    """`value` as type `hint` (containers rebuilt, numbers widened), or a SchemaError at `path`."""
    if hint is Any or hint is object:
        return value
    if is_dataclass_type(hint):
        return build(hint, value, base=current if isinstance(current, hint) else None, path=path, complete=complete)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for opt in options:
            try:
                return convert(opt, value, current, path, complete)
            except SchemaError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise SchemaError(path, f"expected {describe(hint)}, got {_show(value)}")
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise SchemaError(path, f"must be one of {', '.join(map(str, args))}; got {_show(value)}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if value in (member, member.value, member.name):
                return member
        raise SchemaError(path, f"must be one of {', '.join(str(m.value) for m in hint)}; got {_show(value)}")
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return _convert_dict(args, value, current, path, complete)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return _convert_sequence(hint, origin or hint, args, value, path)
    if hint in (bool, int, float, str):
        return _convert_scalar(hint, value, path)
    if hint is type(None):
        if value is None:
            return None
        raise SchemaError(path, f"expected null, got {_show(value)}")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise SchemaError(path, f"expected {describe(hint)}, got {_show(value)}")
    return value  # an annotation we cannot check (a TypeVar, a Protocol...): taken as given


def _convert_dict(args: tuple, value: Any, current: Any, path: str, complete: bool) -> dict:
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"expected a mapping, got {_show(value)}")
    key_t, val_t = args if len(args) == 2 else (str, Any)
    if not is_dataclass_type(val_t):  # a free-form dict is a value: replaced whole
        return {convert(key_t, k, None, path): convert(val_t, v, None, join(path, str(k))) for k, v in value.items()}
    out = {} if complete or not isinstance(current, Mapping) else dict(current)
    for k, v in value.items():
        key = convert(key_t, k, None, path)
        if v is None:
            out.pop(key, None)
            continue
        prev = current.get(key) if isinstance(current, Mapping) else None
        out[key] = build(val_t, v, base=prev if isinstance(prev, val_t) else None, path=join(path, str(key)),
                         complete=complete)
    return out


def _convert_sequence(hint: Any, origin: Any, args: tuple, value: Any, path: str) -> list | tuple:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise SchemaError(path, f"expected {describe(hint)}, got {_show(value)}")
    if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):  # fixed-length tuple
        if len(value) != len(args):
            raise SchemaError(path, f"expected {len(args)} items, got {len(value)}")
        return tuple(convert(a, v, None, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    item = args[0] if args else Any
    items = [convert(item, v, None, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(hint: type, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # true/false is never a number or a string here: almost always a typo
    elif hint is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float):
            return float(value)
    elif isinstance(value, str):
        return value
    elif isinstance(value, int | float):  # a str field given 123 (YAML reads it as a number)
        return str(value)
    raise SchemaError(path, f"expected {describe(hint)}, got {_show(value)}")


def describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
                type(None): "null"}.get(hint, hint.__name__)
    return str(hint).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- checks used by the dataclasses themselves


def check_choices(obj: Any) -> None:
    """Literal/Enum fields of a dataclass instance hold an allowed value (direct construction in Python)."""
    for name, hint in hints(type(obj)).items():
        origin = typing.get_origin(hint)
        literal = hint if origin is typing.Literal else next(
            (a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal), None)
        if literal is not None and not (getattr(obj, name) is None and type(None) in typing.get_args(hint)):
            convert(literal, getattr(obj, name), None, name)


def check_params(params: Mapping[str, Any], factory: Callable[..., Any], what: str) -> None:
    """Keys (and, where annotated, value types) of free-form `params` against what `factory` accepts."""
    accepted = declared_params(factory)
    if accepted is None:
        return  # the factory takes any keyword: it checks for itself
    for key, value in params.items():
        if key not in accepted:
            raise SchemaError(f"params.{key}", f"not a parameter of {what}" + suggest(str(key), list(accepted)))
        hint = accepted[key]
        if hint is not inspect.Parameter.empty and not conforms(hint, value):
            raise SchemaError(f"params.{key}", f"expected {describe(hint)}, got {_show(value)}")


@functools.cache
def declared_params(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """Keyword parameters a registered factory accepts, with their type hints; None when it takes any.

    A factory that only forwards `**params` to the class it returns (`def _face(**params) -> FaceDetector`)
    declares that class's constructor parameters.
    """
    target: Any = factory
    for _ in range(3):
        fn = target.__init__ if isinstance(target, type) else target
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        try:
            resolved = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not resolve: names still count
            resolved = {}
        named = {n: resolved.get(n, inspect.Parameter.empty) for n, p in sig.parameters.items()
                 if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        forwards = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if not forwards:
            return named
        ret = resolved.get("return") if not isinstance(target, type) else None
        if named or not isinstance(ret, type):
            return None
        target = ret
    return None


def conforms(hint: Any, value: Any) -> bool:
    """Whether `value` fits `hint` (a check only: params go to factories as given)."""
    try:
        convert(hint, value)
    except SchemaError:
        return False
    return True


# -- walking


def leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config instance: dataclass fields, dict entries, free-form keys."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for name in hints(type(obj)):
            yield from leaves(getattr(obj, name), join(path, name))
    elif isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            yield from leaves(v, join(path, str(k)))
    else:
        yield path, obj


def to_data(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config instance; tuples become lists, enums their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_data(getattr(obj, name)) for name in hints(type(obj))}
    if isinstance(obj, Mapping):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_data(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
