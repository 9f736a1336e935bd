"""Typed configuration: params.yaml sections become dataclasses, and a typo is an error, not a silent default."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ensemble.core.errors import UserError

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(UserError, ValueError):
    """A params.yaml problem; the message names the file and key."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


class Choice:
    """One of a fixed set of values."""

    def __init__(self, *options: Any):
        self.options = options

    def allows(self, value: Any) -> bool:
        return value in self.options

    def __str__(self) -> str:  # as written in params.yaml: true / false, not Python's True / False
        return "one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in self.options)


class Range:
    """A number in an interval; `low_open` / `high_open` exclude the ends."""

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def allows(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):  # a string in an AnyOf
            return False
        if not math.isfinite(value):  # NaN compares false with everything; no setting means infinity
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"a number {'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"a number {'<' if self.high_open else '<='} {self.high}"
        return f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


class AnyOf:
    """Allowed when any of the rules allows it, e.g. AnyOf(Choice(0), Range(2)): 0 or at least 2."""

    def __init__(self, *rules: Any):
        self.rules = rules

    def allows(self, value: Any) -> bool:
        return any(rule.allows(value) for rule in self.rules)

    def __str__(self) -> str:
        return " or ".join(map(str, self.rules))


class Each:
    """A list whose every element the rule allows, with at least `min_len` elements,
    e.g. Each(Range(0, low_open=True), min_len=1): a non-empty list of positive numbers."""

    def __init__(self, rule: Any = None, min_len: int = 0):
        self.rule, self.min_len = rule, min_len

    def allows(self, value: Any) -> bool:
        items = value if isinstance(value, list) else [value]
        return len(items) >= self.min_len and (self.rule is None or all(self.rule.allows(v) for v in items))

    def __str__(self) -> str:
        at_least = f"at least {self.min_len} " if self.min_len else ""
        return f"a list of {at_least}values" + (f", each {self.rule}" if self.rule is not None else "")


#: 3e-5 without a dot is a string to PyYAML (YAML 1.1) but a float to DVC's ruamel (YAML 1.2)
_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _takes_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _type_error(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the annotation `hint` (None when it fits). YAML gives bool, int,
    float, str, list, dict and None; an int is a valid float."""
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        errors = [_type_error(value, h) for h in typing.get_args(hint)]
        return None if any(e is None for e in errors) else errors[0]
    if hint is type(None):
        return None if value is None else "must be empty (null)"
    if origin is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if origin is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be a whole number"
    if origin is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if origin is str:
        return None if isinstance(value, str) else "must be a string"
    if origin is list:
        if not isinstance(value, list):
            return "must be a list"
        inner = typing.get_args(hint)
        for item in value if inner else ():
            problem = _type_error(item, inner[0])
            if problem:
                return f"holds {item!r} ({type(item).__name__}); each element {problem}"
        return None
    if origin is dict:
        return None if isinstance(value, dict) else "must be a mapping"
    return None


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; nested dataclass fields are built recursively.

    Two kinds of rule, one style each, both declared on the class and checked here, before anything is
    loaded or trained:
    - one key: its type (the annotation; list elements too) and `constraints`, a ClassVar mapping
      field -> Choice | Range | AnyOf | Each declared beside the fields (scikit-learn's
      `_parameter_constraints`);
    - between keys: a `problems()` method yielding (key, what is wrong) for the built config; it reads
      the config and never changes it.
    Any of them is a ConfigError naming the key, the value and what is allowed."""
    where = where or cls.__name__
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"params {where}: {values!r} must be a mapping of keys")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"params {where}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    # each class of the MRO may declare its own fields' rules (a shared base such as FoldBudget)
    constraints = {k: v for c in reversed(cls.__mro__) for k, v in vars(c).get("constraints", {}).items()}
    kwargs = {}
    for name, value in values.items():
        hint, key = hints.get(name), f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, key)
        else:
            if isinstance(value, str) and _takes_float(hint) and _EXPONENT_FLOAT.fullmatch(value.strip()):
                value = float(value)
            problem = _type_error(value, hint)
            if problem:
                raise ConfigError(f"params {key}: {value!r} ({type(value).__name__}) {problem}")
            if hint is float and isinstance(value, int):
                value = float(value)
            rule = constraints.get(name)
            if rule is not None and value is not None and not rule.allows(value):
                raise ConfigError(f"params {key}: {value!r} is not allowed; expected {rule}")
        kwargs[name] = value
    built = cls(**kwargs)
    for key, problem in getattr(built, "problems", lambda: ())():
        raise ConfigError(f"params {where}.{key}: {problem}")
    return built


def as_list(value: Any) -> list:
    """A key that takes one value or a list of them (`devices: cpu`, `probe_c: 0.001`), as a list."""
    return list(value) if isinstance(value, list) else [value]


def read_section(name: str, cls: type[T], path: str | Path = DEFAULT_PARAMS) -> T:
    """The one way a stage gets its config: its own params.yaml section as a checked dataclass."""
    params = load_params(path)
    if name not in params:
        raise ConfigError(f"{path}: no `{name}:` section (the {name} stage reads it)")
    return from_dict(cls, params[name], name)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
