"""Typed settings: one frozen dataclass per command, read from CLI flags, TOML files or key=value pairs.

The same class defines a library function's options, its command-line flags, the keys of
its TOML file and a Prefect flow's parameters, so the names can never drift apart.

    @dataclass(frozen=True)
    class BuildConfig:
        out: Path = field(metadata={"help": "dataset directory to write"})
        source: list[str] = field(default_factory=list, metadata={"help": "wit:PATH or crawl:URL"})

    cfg = load_config(BuildConfig, "build.toml", ["out=data/web"])   # TOML, then overrides
    add_arguments(parser, BuildConfig); cfg = from_namespace(BuildConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import tomllib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from common.errors import UserError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(UserError, ValueError):
    """A setting is unknown, missing or of the wrong type; the message names it and what was expected."""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_describe(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


_QUOTES = "\"'"
_LIST_FORMS = 'write [] for none, or a,b or [a,b] or ["a","b"]'


def split_list(text: str, name: str) -> list[str]:
    """The items of a list setting given as one string (`key=VALUE`, or a string in TOML).

    `[]` (and an empty string) is no items; `[a,b]`, `["a", "b"]` and `a,b` are the items a and b. A value
    that opens a bracket or a quote it does not close, or nests lists, raises ConfigError naming `name`.
    """
    value = text.strip()
    bracketed = value.startswith("[")
    if bracketed:
        if not value.endswith("]"):
            raise ConfigError(f"setting `{name}`: {text!r} opens [ but does not close it; {_LIST_FORMS}")
        try:  # a TOML array of strings: quoted items may hold commas
            document = tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            document = {}
        parsed = document.get("v") if list(document) == ["v"] else None
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
        value = value[1:-1]
    items = []
    for item in (part.strip() for part in value.split(",")):
        if len(item) >= 2 and item[0] == item[-1] and item[0] in _QUOTES:
            item = item[1:-1]
        unbalanced = item != "" and (item[0] in _QUOTES or item[-1] in _QUOTES)
        if unbalanced or (bracketed and any(c in item for c in "[]\"'")):
            raise ConfigError(f"setting `{name}`: {text!r} is not a list of plain items; {_LIST_FORMS}")
        if item:
            items.append(item)
    return items


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a TOML value or a command-line string to the annotated type, or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (
            isinstance(value, str) and value.lower() in {"none", "null"} and type(None) in args
        ):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, name)
            except ConfigError:
                pass  # try the next member of the union; the message below names them all
        raise ConfigError(f"setting `{name}`: {value!r} is not {_describe(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"setting `{name}`: {value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (str,)
        if isinstance(value, str):
            items = split_list(value, name)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"setting `{name}`: {value!r} is not a list")
        converted = [coerce(v, item_tp, name) for v in items]
        return tuple(converted) if origin is tuple else converted
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"setting `{name}`: {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"setting `{name}`: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"setting `{name}`: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"setting `{name}`: {value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"setting `{name}`: {value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"setting `{name}`: {value!r} is not a string")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"setting `{name}`: {value!r} is not a path")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise ConfigError(f"setting `{name}`: {value!r} is not one of {[e.value for e in tp]}") from exc
    return value


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _parse_overrides(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in parsed and isinstance(parsed[key], list):
            parsed[key].append(value)
        elif key in parsed:
            parsed[key] = [parsed[key], value]
        else:
            parsed[key] = value
    return parsed


def read_toml(path: Path | str, section: str | None = None) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such settings file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    if section is not None:
        data = data.get(section, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{section}] is not a table")
    return data


def build(cls: type[T], values: Mapping[str, Any], source: str = "settings") -> T:
    """Make `cls` from a mapping, with clear errors for unknown keys, wrong types and missing values."""
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, (f, tp) in fields.items():
        if name in values:
            kwargs[name] = coerce(values[name], tp, name)
        elif not _has_default(f):
            raise ConfigError(f"{source}: setting `{name}` ({_describe(tp)}) is required for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source}: {exc}") from exc


def load_config(
    cls: type[T],
    toml_path: Path | str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    section: str | None = None,
) -> T:
    """Defaults, then the TOML file (optionally one [section]), then overrides (a mapping or key=value strings)."""
    values: dict[str, Any] = {}
    source = cls.__name__
    if toml_path is not None:
        values.update(read_toml(toml_path, section))
        source = str(toml_path)
    values.update(_parse_overrides(overrides))
    return build(cls, values, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-able dict of a settings object (paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, enum.Enum):
            return v.value
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    exclude: Iterable[str] = (),
    include: Iterable[str] | None = None,
) -> None:
    """One `--flag` per field (underscores become dashes; `include` limits them); defaults stay in the dataclass."""
    excluded = set(exclude)
    included = None if include is None else set(include)
    for name, (f, tp) in _fields(cls).items():
        if name in excluded or (included is not None and name not in included):
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if _has_default(f):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default not in (None, [], ()):
                help_text += f" (default: {default})"
        else:
            help_text += " (required)"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        base = tp
        if get_origin(tp) in (Union, types.UnionType):
            non_none = [a for a in get_args(tp) if a is not type(None)]
            base = non_none[0] if len(non_none) == 1 else tp
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(base) in (list, tuple):
            parser.add_argument(flag, action="append", metavar=name.upper(), **kwargs)
        else:
            if get_origin(base) is Literal:
                kwargs["choices"] = [str(c) for c in get_args(base)]
            parser.add_argument(flag, metavar=f.metadata.get("metavar", name.upper()), **kwargs)


def from_namespace(
    cls: type[T],
    ns: argparse.Namespace,
    toml_path: Path | str | None = None,
    section: str | None = None,
) -> T:
    """Settings from parsed flags; flags the user gave override the TOML file, which overrides defaults."""
    given = {k: v for k, v in vars(ns).items() if k in _fields(cls)}
    return load_config(cls, toml_path, given, section)


def is_settings(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


__all__ = [
    "ConfigError",
    "add_arguments",
    "build",
    "coerce",
    "from_namespace",
    "is_settings",
    "load_config",
    "read_toml",
    "to_dict",
]
