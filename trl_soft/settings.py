"""What every concern's settings object has in common.

Each concern of a SOFT run (rounds, prompting, generation, engines, filters, curriculum, validation, benchmarks,
diagnostics, behaviour, judges, collapse) owns one small frozen dataclass built from the flat `SOFTConfig` fields once,
in `SOFTConfig.__post_init__`. A concern's class lists the `SOFTConfig` field behind each attribute (`CONFIG_FIELDS`,
the one place that mapping is written), checks its values when it is built (errors name the `SOFTConfig` field and
the fix), says which metrics it adds to every round (`metric_names`) and which of its values define what a run
produces (`fingerprint`, hashed into the run manifest so that a resumed run matches the run it continues).

This module imports nothing of the package: every concern imports it, and it knows none of them.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar


def choice_error(field_name: str, value: object, choices: tuple[str, ...], fix: str = "") -> ValueError:
    """`field` must be one of ...; got ...  (+ an optional hint)."""
    message = f"`{field_name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}."
    return ValueError(f"{message} {fix}" if fix else message)


class ConcernSettings:
    """Mixin for a concern's frozen settings dataclass (see the module docstring)."""

    # attribute -> the SOFTConfig field it is built from; attributes not listed are passed to `from_config` explicitly.
    CONFIG_FIELDS: ClassVar[dict[str, str]] = {}
    # Attributes that do not change what a run produces (where a server listens, timeouts): left out of the fingerprint.
    NOT_FINGERPRINTED: ClassVar[frozenset[str]] = frozenset()
    # The metrics of this concern for which lower is better (the rest: higher is better).
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        self.check()

    @classmethod
    def from_config(cls, config: Any, **extra: Any):
        """Build the settings from a `SOFTConfig` (or anything with its field names), plus `extra` attributes."""
        return cls(**{attr: getattr(config, name) for attr, name in cls.CONFIG_FIELDS.items()}, **extra)

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
