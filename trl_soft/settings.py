"""What every concern's settings object has in common, and where every setting is declared.

Each concern of a SOFT run (rounds, prompting, generation, engines, filters, curriculum, validation, benchmarks,
diagnostics, behaviour, judges, collapse) owns one small frozen dataclass built from the flat `SOFTConfig` fields once,
in `SOFTConfig.__post_init__`. Each setting is declared once, in its concern's class, with `setting(default, help)`:
its name, type, default, help and (in the class's `check`) its checks. `SOFTConfig`'s flat fields, the command line,
YAML configs and docs/configuration.md are all generated from those declarations (`config_settings`); the `SOFTConfig`
field is named after the attribute unless the setting names it (`setting(..., name="round_data")`), and
`CONFIG_FIELDS` (attribute -> `SOFTConfig` field) is derived from them. An attribute read from a field declared
elsewhere (TrainingArguments' `seed`, another concern's setting) says so with `read_from(name, default)`. A concern
checks its values when it is built (errors name the `SOFTConfig` field and the fix), says which metrics it adds to
every round (`metric_names`) and which of its values define what a run produces (`fingerprint`, hashed into the run
manifest so that a resumed run matches the run it continues).

Before a concern checks its values, every attribute is checked against its annotation (`check_types`): a YAML config
reaches `SOFTConfig` without type conversion, so `num_rounds: 2.5` or `num_rounds: [1, 2]` would otherwise arrive as
they are. A wrong type is a `ValueError`, like every other impossible value, naming the field, the value and the type
expected. A bool is not a whole number; a whole number is a number; a path object is taken as its text; a list is
taken for a tuple; None in a list attribute that does not take None is the empty list (a list setting left unset).

This module imports nothing of the package: every concern imports it, and it knows none of them.
"""

from __future__ import annotations

import numbers
import os
import types
import typing
from dataclasses import MISSING, Field, field, fields, is_dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

# The keys a setting's dataclass field carries in its metadata.
HELP, CONFIG, CONFIG_TYPE, DECLARED = "help", "config", "config_type", "declared"


def choice_error(field_name: str, value: object, choices: tuple[str, ...], fix: str = "") -> ValueError:
    """`field` must be one of ...; got ...  (+ an optional hint)."""
    message = f"`{field_name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}."
    return ValueError(f"{message} {fix}" if fix else message)


def setting(default: Any, help: str, *, name: str | None = None, config_type: Any = None) -> Any:
    """Declare one setting of a concern, the one place it is written: its default, its help (the `--help` text and
    docs/configuration.md), the name of its `SOFTConfig` field (default: the attribute's) and, where the command line
    and YAML take another type than the concern holds, that type. Without `config_type` the field's type is the
    attribute's, with lists for tuples (`tuple[str, ...]` -> `list[str]`) and `| None` added when the default is None
    (a list left unset). A tuple default is a fresh list in each `SOFTConfig`."""
    return field(default=default, metadata={HELP: help, CONFIG: name, CONFIG_TYPE: config_type, DECLARED: True})


def read_from(name: str, default: Any) -> Any:
    """An attribute read from a `SOFTConfig` field declared elsewhere: one of `SFTConfig`'s (`seed`) or another
    concern's setting (`benchmark_data_dir`). Its default, for settings built without a config, must equal that
    field's (tests/test_settings.py checks)."""
    return field(default=default, metadata={CONFIG: name, DECLARED: False})


class ConfigField(NamedTuple):
    """One `SOFTConfig` field, as a concern's `setting` declares it."""

    name: str
    type: Any
    help: str
    default: Any = MISSING
    default_factory: Any = MISSING

    @property
    def value(self) -> Any:
        """The default a new `SOFTConfig` gets."""
        return self.default_factory() if self.default_factory is not MISSING else self.default

    def field(self) -> Field:
        """The dataclass field `SOFTConfig` gets (its help in the metadata, as `HfArgumentParser` reads it)."""
        if self.default_factory is not MISSING:
            return field(default_factory=self.default_factory, metadata={HELP: self.help})
        return field(default=self.default, metadata={HELP: self.help})


class _ConfigFields:
    """`CONFIG_FIELDS` on a concern's class or instance: attribute -> `SOFTConfig` field, derived from its settings."""

    def __get__(self, instance: Any, owner: type) -> MappingProxyType:
        return config_fields(owner)


class ConcernSettings:
    """Mixin for a concern's frozen settings dataclass (see the module docstring)."""

    # attribute -> the SOFTConfig field it is built from (derived from `setting` / `read_from`); attributes without
    # one are passed to `from_config` explicitly.
    CONFIG_FIELDS: ClassVar[MappingProxyType] = _ConfigFields()
    # Attributes that do not change what a run produces (where a server listens, timeouts): left out of the fingerprint.
    NOT_FINGERPRINTED: ClassVar[frozenset[str]] = frozenset()
    # The metrics of this concern for which lower is better (the rest: higher is better).
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        self.fill_unset()
        self.check_types()
        self.check()

    @classmethod
    def from_config(cls, config: Any, **extra: Any):
        """Build the settings from a `SOFTConfig` (or anything with its field names), plus `extra` attributes."""
        return cls(**cls.config_values(config), **extra)

    @classmethod
    def config_values(cls, config: Any) -> dict[str, Any]:
        """attribute -> its value in `config`, for every attribute read from a config field."""
        return {attr: getattr(config, name) for attr, name in cls.CONFIG_FIELDS.items()}

    def fill_unset(self) -> None:
        """A list attribute left unset (None) that does not take None becomes the empty tuple. A concern whose unset
        list means something else (every filter, round 0) says so first, then calls this."""
        hints = field_types(type(self))
        for f in fields(self):
            expected = hints.get(f.name)
            if getattr(self, f.name) is None and allows(expected, tuple) and not allows(expected, None):
                object.__setattr__(self, f.name, ())  # the dataclasses are frozen

    def check_types(self) -> None:
        """Refuse a value whose type its annotation does not allow (see the module docstring); a path object in a
        text field becomes its text, and a list in a tuple field a tuple."""
        hints = field_types(type(self))
        for f in fields(self):
            expected, value = hints.get(f.name, Any), getattr(self, f.name)
            if isinstance(value, os.PathLike) and allows(expected, str):
                value = os.fspath(value)
            elif isinstance(value, list) and allows(expected, tuple):
                value = tuple(value)
            if not matches(value, expected):
                raise type_error(self.CONFIG_FIELDS.get(f.name, f.name), value, expected)
            object.__setattr__(self, f.name, value)  # the dataclasses are frozen

    def check(self) -> None:
        """Raise `ValueError` naming the `SOFTConfig` field and the fix for any impossible value."""

    def field_error(self, attr: str, message: str) -> ValueError:
        """An error about attribute `attr`, named by its `SOFTConfig` field: "`field` <message>"."""
        return ValueError(f"`{self.CONFIG_FIELDS.get(attr, attr)}` {message}")

    def check_choice(self, attr: str, choices: tuple[str, ...], fix: str = "") -> None:
        value = getattr(self, attr)
        if value not in choices:
            raise choice_error(self.CONFIG_FIELDS.get(attr, attr), value, choices, fix)

    def metric_names(self) -> set[str]:
        """The per-round metrics this concern adds (what `collapse_metric` may watch)."""
        return set()

    def metric_direction(self, metric: str) -> bool | None:
        """The direction of one of this concern's metrics, or None when `metric` is not one it knows."""
        return False if metric in self.LOWER_IS_BETTER else None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def fingerprint(self) -> dict[str, Any]:
        """The values that define what a run with these settings produces, by `SOFTConfig` field name."""
        return {
            self.CONFIG_FIELDS.get(f.name, f.name): getattr(self, f.name)
            for f in fields(self)
            if f.name not in self.NOT_FINGERPRINTED and f.compare
        }


# ---- the settings, as SOFTConfig's fields -------------------------------------------------------------------------
@cache
def config_fields(cls: type) -> MappingProxyType:
    """attribute -> `SOFTConfig` field, for every attribute of `cls` read from one (declared or `read_from`)."""
    if not is_dataclass(cls):
        return MappingProxyType({})
    return MappingProxyType({f.name: f.metadata[CONFIG] or f.name for f in fields(cls) if CONFIG in f.metadata})


def config_settings(cls: type) -> list[ConfigField]:
    """The `SOFTConfig` fields the settings of `cls` declare (not those it `read_from`), in their order."""
    hints = field_types(cls)
    declared = []
    for f in fields(cls):
        if not f.metadata.get(DECLARED):
            continue
        default = f.default if f.default_factory is MISSING else f.default_factory()
        kind = f.metadata[CONFIG_TYPE] or config_type(hints[f.name], default)
        entry = ConfigField(f.metadata[CONFIG] or f.name, kind, f.metadata[HELP])
        if isinstance(default, (tuple, list, dict, set)):
            copy_of = type(default) if isinstance(default, (dict, set)) else list
            entry = entry._replace(default_factory=lambda d=default, t=copy_of: t(d))
        else:
            entry = entry._replace(default=default)
        declared.append(entry)
    return declared


def config_type(annotation: Any, default: Any) -> Any:
    """The type `SOFTConfig` (and so the command line) gives an attribute: its annotation with lists for tuples,
    and `| None` added when the default is None."""
    options = [_as_list(option) for option in _options(annotation)]
    if default is None and type(None) not in options:
        options.append(type(None))
    union = options[0]
    for option in options[1:]:
        union = union | option
    return union


def _as_list(annotation: Any) -> Any:
    if typing.get_origin(annotation) is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return list[args[0]] if args else list
    return annotation


# ---- types -------------------------------------------------------------------------------------------------------
@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings dataclass (they are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def _options(expected: Any) -> tuple[Any, ...]:
    """The alternatives of a union (`int | None` -> int, NoneType); any other annotation alone."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return typing.get_args(expected)
    return (expected,)


def allows(expected: Any, kind: Any) -> bool:
    """Whether annotation `expected` has an alternative of kind `kind` (None, str, tuple, ...)."""
    kind = type(None) if kind is None else kind
    return any((typing.get_origin(option) or option) is kind for option in _options(expected))


def matches(value: Any, expected: Any) -> bool:
    """Whether `value` is of the annotated type: bool is not an int, an int is a float, a list is a tuple."""
    if expected is Any:
        return True
    if len(_options(expected)) > 1:
        return any(matches(value, option) for option in _options(expected))
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (tuple, list):
        item = args[0] if args else Any
        return isinstance(value, (tuple, list)) and all(matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return not isinstance(expected, type) or isinstance(value, expected)


def describe(expected: Any) -> str:
    """An annotation in words, for messages: `int | None` -> "a whole number (int) or None"."""
    if len(_options(expected)) > 1:
        return " or ".join(describe(option) for option in _options(expected))
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (tuple, list):
        plural = {str: "strings", int: "whole numbers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    words = {bool: "true or false (bool)", int: "a whole number (int)", float: "a number (float)",
             str: "a string (str)", type(None): "None", dict: "a mapping (dict)"}
    return words.get(origin or expected, getattr(expected, "__name__", str(expected)))


def type_error(field_name: str, value: Any, expected: Any) -> ValueError:
    """`field` must be <type>; got <value> (<its type>)."""
    return ValueError(
        f"`{field_name}` must be {describe(expected)}; got {value!r} ({type(value).__name__})."
    )
