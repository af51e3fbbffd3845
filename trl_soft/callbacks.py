"""Round-level callbacks: `SOFTCallback` (the extra events) and `EarlyCollapseCallback` (stop before collapse).

The Trainer's own events (`on_train_begin`, `on_log`, ...) fire inside each round's fine-tuning, and the Trainer's
`TrainerState` is rebuilt at every round, so nothing in it survives from one round to the next. SOFT decisions are
made between rounds, so `SOFTTrainer` calls three more events on every callback that is a `SOFTCallback`:

- `on_soft_begin(args, soft_state)`: once per `train()`, with the run manifest (whose `history` holds the rounds
  already done, so a resumed run can rebuild its memory);
- `on_round_metrics(args, round_index, metrics)`: after the round is trained and evaluated; a callback may add its
  own entries to `metrics` (declare their names in `provides_metrics` so they can be monitored);
- `on_round_end(args, round_index, metrics, control)`: the round's final metrics; set `control.should_stop` (and
  optionally `control.restore_round`) to end the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback


@dataclass
class RoundControl:
    """What the callbacks decided at the end of a round."""

    should_stop: bool = False
    stop_reason: str | None = None
    restore_round: int | None = None  # weights to reload before the final model is saved (0 = starting weights)


class SOFTCallback(TrainerCallback):
    """A `TrainerCallback` that also hears about SOFT rounds (see the module docstring)."""

    provides_metrics: tuple[str, ...] = ()
    requires_start_weights: bool = False  # the trainer saves round_0/model when a callback may restore it

    def on_soft_begin(self, args, soft_state, **kwargs) -> None:
        pass

    def on_round_metrics(self, args, round_index: int, metrics: dict[str, Any], **kwargs) -> None:
        pass

    def on_round_end(self, args, round_index: int, metrics: dict[str, Any], control: RoundControl, **kwargs) -> None:
        pass


class EarlyCollapseCallback(SOFTCallback):
    """Stops the rounds when a per-round metric has been worse than its best for `patience` rounds in a row.

    Late SOFT rounds can collapse: the model trains on its own ever sharper outputs and drifts away from good
    answers. The validation metric (by default the validation-set NLL, lower is better) shows it. A round is *bad*
    when its value is worse than the best so far by more than `threshold`; a round within `threshold` of the best
    breaks the streak; a better one becomes the best. After `patience` bad rounds in a row the run stops and, with
    `restore_best_round`, the best round's weights are reloaded so the saved final model is the best one.

    Args:
        metric: a key of the round metrics (`validation_nll`, `truthfulqa_mc1`, `sample_distinct_2`, ...).
        greater_is_better: direction of `metric`.
        patience: consecutive bad rounds before stopping (>= 1).
        threshold: how much worse than the best a round may be before it counts as bad (>= 0).
        restore_best_round: reload the best round's weights when stopping.
        include_start: count the starting model (round 0, from `evaluate_start`) as a candidate best round.
    """

    def __init__(
        self,
        metric: str = "validation_nll",
        greater_is_better: bool = False,
        patience: int = 1,
        threshold: float = 0.0,
        restore_best_round: bool = True,
        include_start: bool = True,
    ):
        if patience < 1:
            raise ValueError(f"EarlyCollapseCallback: `patience` must be >= 1; got {patience}.")
        if threshold < 0:
            raise ValueError(f"EarlyCollapseCallback: `threshold` must be >= 0; got {threshold}.")
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.threshold = threshold
        self.restore_best_round = restore_best_round
        self.include_start = include_start
        self.requires_start_weights = restore_best_round and include_start
        self.reset()

    @classmethod
    def from_config(cls, args) -> EarlyCollapseCallback:
        """The callback a `SOFTConfig` asks for (`collapse_*` fields, `restore_best_round`)."""
        return cls(
            metric=args.resolved_collapse_metric,
            greater_is_better=args.resolved_collapse_greater_is_better,
            patience=args.collapse_patience,
            threshold=args.collapse_threshold,
            restore_best_round=args.restore_best_round,
            include_start=args.evaluate_start,
        )

    def reset(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.best_round: int | None = None
        self.best_value: float | None = None
        self.bad_rounds = 0

    def _is_better(self, value: float, reference: float) -> bool:
        return value > reference if self.greater_is_better else value < reference

    def _is_bad(self, value: float) -> bool:
        gap = (self.best_value - value) if self.greater_is_better else (value - self.best_value)
        return gap > self.threshold

    def observe(self, round_index: int, value: float) -> bool:
        """Record one round's value; True when the run should stop now."""
        if value is None or not math.isfinite(value):
            # A NaN/inf metric (diverged weights) is the clearest collapse there is.
            value = -math.inf if self.greater_is_better else math.inf
        self.history.append((round_index, value))
        if self.best_value is None or self._is_better(value, self.best_value):
            self.best_round, self.best_value, self.bad_rounds = round_index, value, 0
        elif self._is_bad(value):
            self.bad_rounds += 1
        else:
            self.bad_rounds = 0
        return self.bad_rounds >= self.patience

    def on_soft_begin(self, args, soft_state, **kwargs) -> None:
        """Rebuild the cross-round memory from the manifest (fresh run: round 0 only; resumed run: every round)."""
        self.reset()
        base = soft_state.base_metrics or {}
        if self.include_start and self.metric in base:
            self.observe(0, base[self.metric])
        for metrics in soft_state.history:
            if self.metric in metrics:
                self.observe(metrics["round"], metrics[self.metric])

    def on_round_end(self, args, round_index: int, metrics: dict[str, Any], control: RoundControl, **kwargs) -> None:
        if self.metric not in metrics:
            raise KeyError(
                f"EarlyCollapseCallback monitors {self.metric!r} but round {round_index} produced only "
                f"{sorted(metrics)}. Choose one of those with `collapse_metric`."
            )
        if not self.observe(round_index, metrics[self.metric]):
            return
        direction = "higher" if self.greater_is_better else "lower"
        control.should_stop = True
        control.stop_reason = (
            f"{self.metric} ({direction} is better) was worse than its best {self.best_value:.4f} (round "
            f"{self.best_round}) by more than {self.threshold} for {self.bad_rounds} round(s) in a row; last value "
            f"{self.history[-1][1]:.4f} at round {round_index}"
        )
        if self.restore_best_round:
            control.restore_round = self.best_round
