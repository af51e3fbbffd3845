"""Intervals for the behaviour metrics, and the noise a difference between two of them must beat.

- A rate (share of answers with a property) gets a Wilson score interval: unlike the normal interval it stays inside
  [0, 1] and does not collapse to a point at 0% or 100%, which the refusal rates of small models often are.
- A mean of per-item scores in [0, 1] (the pairwise win rate) gets a normal interval from the per-item spread.
- A difference between two measurements of the **same items** (zero-shot vs principled, round t vs round 0) gets a
  paired interval from the per-item differences; two rates measured on different items get Newcombe's hybrid
  interval (`newcombe_difference`).

`Estimate` is what every metric records: value, interval, n and standard error (`{name}`, `{name}_low`,
`{name}_high`, `{name}_n`, `{name}_se` in the round metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
# Where a metrics dict keeps the per-item scores behind its metrics ({metric: [score per item]}), for paired tests.
ITEM_SCORES = "item_scores"


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int
    se: float

    def as_metrics(self, name: str) -> dict[str, float | int]:
        return {name: self.value, f"{name}_low": self.low, f"{name}_high": self.high, f"{name}_n": self.n,
                f"{name}_se": self.se}


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate(items: Sequence[bool | int | float]) -> Estimate:
    """Share of true items, with its Wilson interval; `se` is the Agresti-Coull one (never 0 at 0% or 100%)."""
    n = len(items)
    if n == 0:
        raise ValueError("A rate needs at least one item.")
    successes = sum(1 for x in items if x)
    low, high = wilson(successes, n)
    adjusted = (successes + 2) / (n + 4)
    return Estimate(successes / n, low, high, n, math.sqrt(adjusted * (1 - adjusted) / (n + 4)))


def mean(items: Sequence[float], clip: tuple[float, float] | None = (0.0, 1.0)) -> Estimate:
    """Mean of per-item scores with a normal interval (sample standard deviation)."""
    n = len(items)
    if n == 0:
        raise ValueError("A mean needs at least one item.")
    value = sum(items) / n
    variance = sum((x - value) ** 2 for x in items) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(variance / n)
    low, high = value - Z95 * se, value + Z95 * se
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return Estimate(value, low, high, n, se)


@dataclass(frozen=True)
class Difference:
    """`after - before`, with its 95% interval; `verdict` says whether the interval excludes 0."""

    value: float
    low: float
    high: float
    se: float
    paired: bool

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "no clear change"

    def outcome(self, higher_is_better: bool) -> str:
        """'better', 'worse' or 'no clear change' for a metric with this direction."""
        if self.verdict == "no clear change":
            return self.verdict
        return "better" if (self.verdict == "higher") == higher_is_better else "worse"

    def as_dict(self) -> dict[str, float | bool | str]:
        return {"diff": self.value, "low": self.low, "high": self.high, "se": self.se, "paired": self.paired,
                "verdict": self.verdict}


def paired_difference(before: Sequence[float], after: Sequence[float]) -> Difference:
    """Mean per-item difference of two measurements of the same items, with a normal interval."""
    if len(before) != len(after) or not before:
        raise ValueError(f"A paired difference needs the same items twice; got {len(before)} and {len(after)}.")
    estimate = mean([float(a) - float(b) for b, a in zip(before, after)], clip=None)
    return Difference(estimate.value, estimate.low, estimate.high, estimate.se, True)


def newcombe_difference(before: Sequence[bool], after: Sequence[bool]) -> Difference:
    """Difference of two independent rates with Newcombe's hybrid score interval (method 10)."""
    b, a = rate(before), rate(after)
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Difference(d, low, high, math.sqrt(a.se ** 2 + b.se ** 2), False)
