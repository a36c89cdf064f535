"""The settings machinery: how a setting is declared, checked, read from text and stored.

A setting is a field of a frozen dataclass that carries its default, its help text and its
allowed values (`setting(...)`). From these declarations

- cli.py generates the flags (`--lr`, `--steps`, ...) and their `--help` lines,
- `validate` (run by every `Settings` dataclass on construction) checks each value against its
  range before anything runs, with one message naming the setting and its allowed values,
- `to_dict` / `from_dict` store a tree of settings as nested JSON and read it back strictly.

Flags are the flat names of the leaves (`--lr` is `optimizer.lr`), unique over a whole tree.
The settings themselves live beside what they configure: config.py (a run), the command
modules of jaxprompt/cli/ (each command's options), data/tasks.py (a task file).
This module imports nothing of jaxprompt.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar


class SettingError(ValueError):
    """A setting outside its allowed values (one line, naming the setting and what it allows)."""


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An error from a library (Orbax, datasets, safetensors, ...) as part of a one-line message:
    its type and its text with whitespace collapsed, cut at `limit` characters."""
    text = " ".join(str(e).split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


# ---- declaring a setting -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numbers: `low`/`high` bounds (None: unbounded), each inclusive unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x) -> bool:
        if not isinstance(x, int) and not math.isfinite(x):  # an int of any size compares exactly
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open and x == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)


def setting(default=dataclasses.MISSING, help: str = "", *, range: Range | None = None, choices=None,
            flag: str | None = None, aliases: tuple[str, ...] = (), default_factory=dataclasses.MISSING,
            repeat: bool = False, shown_default: str | None = None):
    """A dataclass field with its help text and allowed values.

    `flag`: the CLI name (default: the field name, `_` as `-`); `aliases`: other names of the
    flag; `repeat`: a list flag given once per item (`--text a --text b`) instead of
    comma-separated; `shown_default`: the default as --help states it, where the value itself
    would mislead (a path resolved at run time).
    """
    metadata = {"help": help, "range": range, "choices": tuple(choices) if choices else None, "flag": flag,
                "aliases": aliases, "repeat": repeat, "shown_default": shown_default}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_settings(cls_or_obj) -> bool:
    return dataclasses.is_dataclass(cls_or_obj) and hasattr(cls_or_obj, "LABEL")


# ---- types ----------------------------------------------------------------------------------------

def _optional(hint) -> tuple[bool, Any]:
    """(whether None is allowed, the hint without None)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(args) < len(typing.get_args(hint)), args[0] if len(args) == 1 else typing.Union[tuple(args)]
    return False, hint


def _describe_type(hint) -> str:
    optional, hint = _optional(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if args == (tuple[str, float], ...):
            text = "a list of part=rate"
        elif len(args) == 2 and args[1] is Ellipsis:
            text = f"a list of {_describe_type(args[0]).split(' ', 1)[1]}s"
        else:
            text = f"{len(args)} {_describe_type(args[0]).split(' ', 1)[1]}s"
    else:
        text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
    return text + (" or none" if optional else "")


def _has_type(value, hint) -> bool:
    optional, hint = _optional(hint)
    if value is None:
        return optional
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _numbers(value) -> list:
    if isinstance(value, tuple):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _strings(value) -> list:
    if isinstance(value, tuple):
        return [x for v in value for x in _strings(v)]
    return [value] if isinstance(value, str) else []


@functools.cache
def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---- validation ------------------------------------------------------------------------------------

def label(cls, f: dataclasses.Field, obj=None) -> str:
    """How messages name a setting: its flag (`--lr`), or its key in a file (`task key 'data'`).
    A setting with several flags is named by the one `obj.flag_in_use(name)` gives, if any."""
    in_use = getattr(obj, "flag_in_use", None)
    flag = (in_use(f.name) if in_use is not None else None) or f.metadata.get("flag") or f.name.replace("_", "-")
    return cls.LABEL.format(flag=flag, name=f.name)


def allowed(hint, meta) -> str:
    """What a setting accepts, in words: 'an integer >= 1', 'one of soft, ptuning, ...'."""
    optional, inner = _optional(hint)
    if meta.get("choices"):
        text = "one of " + ", ".join(meta["choices"])
    else:
        text = _describe_type(inner)
        if meta.get("range") is not None:
            text += " " + ("each " if typing.get_origin(inner) is tuple else "") + meta["range"].describe()
        elif inner is float:
            text += ", finite"
    return text + (" (or none)" if optional else "")


def validate(obj) -> None:
    """Checks every setting of `obj` (a settings dataclass) against its type and allowed values,
    then the rules between settings (`obj.check()`). Raises `SettingError` naming the first bad one."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints(cls)[f.name]
        if is_settings(value):
            continue  # validated on its own construction
        meta = f.metadata
        bad = not _has_type(value, hint)
        if not bad and meta.get("choices"):
            bad = any(s not in meta["choices"] for s in _strings(value))
        if not bad:
            rng = meta.get("range") or (Range() if _optional(hint)[1] in (float,) or _numbers(value) else None)
            bad = rng is not None and any(x not in rng for x in _numbers(value))
        if bad:
            raise SettingError(f"{label(cls, f, obj)} {_show(value)}: must be {allowed(hint, meta)}")
    check = getattr(obj, "check", None)
    if check is not None:
        check()


def _show(value, top: bool = True) -> str:
    """A value as it is written on the command line (`encoder=0.001,inputs=0.3`, `a,b`, `'soft'`)."""
    if isinstance(value, tuple):
        if not value:
            return "(empty)"
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return ",".join(f"{k}={_show(v, False)}" for k, v in value)
        return ",".join(_show(v, False) for v in value)
    return repr(value) if isinstance(value, str) and top else str(value)


class Settings:
    """Base of the settings dataclasses: validated on construction, flat-name updates."""

    LABEL: ClassVar[str] = "--{flag}"

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_flags(cls, **values):
        """An instance from flat setting names (`lr=0.3, steps=100`), defaults elsewhere."""
        return build(cls, values)

    def replace(self, **values):
        """A copy with settings changed by flat name (`config.replace(lr=0.3, model=...)`)."""
        return build(type(self), values, base=self)

    def check(self) -> None:
        """Rules between settings (overridden where there are some)."""


# ---- the tree of settings --------------------------------------------------------------------------

def leaves(cls) -> list[tuple[tuple[str, ...], str, dataclasses.Field, Any, type]]:
    """(path, flat name, field, type hint, owning class) of every leaf setting under `cls`."""
    out = []
    for f in dataclasses.fields(cls):
        hint = hints(cls)[f.name]
        if isinstance(hint, type) and is_settings(hint):
            out += [((f.name, *path), flat, g, h, owner) for path, flat, g, h, owner in leaves(hint)]
        else:
            out.append(((f.name,), (f.metadata.get("flag") or f.name).replace("-", "_"), f, hint, cls))
    flats = [flat for _, flat, *_ in out]
    dup = {n for n in flats if flats.count(n) > 1}
    if dup:
        raise AssertionError(f"{cls.__name__}: settings {sorted(dup)} share a flat name")
    return out


def get(obj, path: tuple[str, ...]):
    for name in path:
        obj = getattr(obj, name)
    return obj


def build(cls, values: dict[str, Any], base=None):
    """`cls` with the leaves named (flat) in `values` set, the rest from `base` (or defaults)."""
    known = {name: path for path, flat, f, *_ in leaves(cls)
             for name in (flat, *(a.replace("-", "_") for a in f.metadata.get("aliases", ())))}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    by_path = {known[flat]: v for flat, v in values.items()}
    return _build(cls, by_path, base)


def _build(cls, by_path: dict, base):
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints(cls)[f.name]
        sub = getattr(base, f.name) if base is not None else None
        if isinstance(hint, type) and is_settings(hint):
            inner = {p[1:]: v for p, v in by_path.items() if p[0] == f.name}
            kwargs[f.name] = _build(hint, inner, sub) if inner or sub is None else sub
        elif (f.name,) in by_path:
            kwargs[f.name] = by_path[(f.name,)]
        elif base is not None:
            kwargs[f.name] = sub
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """Nested plain data (tuples as lists) for JSON."""
    return _plain(dataclasses.asdict(obj))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def from_dict(cls, data: dict, where: str = "config"):
    """The inverse of `to_dict`, strict: a missing or unknown key is an error naming it."""
    if not isinstance(data, dict):
        raise SettingError(f"{where} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in data]
    extra = sorted(set(data) - set(names))
    if missing:
        raise SettingError(f"{where} lacks the setting {missing[0]!r}")
    if extra:
        raise SettingError(f"{where} has an unknown setting {extra[0]!r}")
    kwargs = {}
    for n in names:
        hint = hints(cls)[n]
        kwargs[n] = (from_dict(hint, data[n], f"{where}.{n}") if isinstance(hint, type) and is_settings(hint)
                     else _tuples(data[n]))
    return cls(**kwargs)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# ---- parsing a flag's text ---------------------------------------------------------------------------

def parse_text(text: str, hint) -> Any:
    """A flag's text as a value of `hint` (`none` for an optional setting's None). Range checks
    are `validate`'s; this only reads the text."""
    optional, hint = _optional(hint)
    if optional and text.strip().lower() == "none":
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        items = [s.strip() for s in text.split(",") if s.strip()]
        if args == (tuple[str, float], ...):
            pairs = []
            for item in items:
                name, sep, rate = item.partition("=")
                if not sep:
                    raise ValueError(f"expected part=rate, got {item!r}")
                pairs.append((name.strip(), float(rate)))
            return tuple(pairs)
        element = args[0]
        return tuple(parse_text(s, element) for s in items)
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text
