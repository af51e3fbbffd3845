"""Round-level callbacks: `SOFTCallback` (the extra events) and `EarlyCollapseCallback` (stop before collapse).

The Trainer's own events (`on_train_begin`, `on_log`, ...) fire inside each round's fine-tuning, and the Trainer's
`TrainerState` is rebuilt at every round, so nothing in it survives from one round to the next. SOFT decisions are
made between rounds, so `SOFTTrainer` calls four more events on every callback that is a `SOFTCallback`:

- `on_soft_begin(args, soft_state)`: once per `train()`, with the run manifest (whose `history` holds the rounds
  already done, so a resumed run can rebuild its memory);
- `on_round_metrics(args, round_index, metrics)`: after the round is trained and evaluated; a callback may add its
  own entries to `metrics` (declare their names in `provides_metrics` so they can be monitored);
- `on_round_end(args, round_index, metrics, control)`: the round's final metrics; set `control.should_stop` (and
  optionally `control.restore_round`) to end the run. `control` is the callbacks' verdict: the round's decision
  (`trl_soft.decision`) reads it and never changes it;
- `on_round_decided(args, decision)`: the round's `RoundDecision` (accepted or rejected, whether the run stops and
  why, the round the next one starts from, the final round so far), once it is recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from .behaviour.settings import greater_is_better
from .behaviour.stats import ITEM_SCORES, Z95, paired_difference
from .progress import RunProgress, interactive, new_bar, say
from .settings import ConcernSettings, setting

# The least change that matters, by kind of metric (`CollapseSettings.threshold_for`).
MEANINGFUL_NLL_CHANGE = 0.01  # nats per token: exp(0.01) = a 1% change of the validation perplexity
MEANINGFUL_RATE_CHANGE = 0.01  # one point of a rate or an accuracy in [0, 1]
RATE_PREFIXES = ("truthfulqa_", "hhh_")


@dataclass(frozen=True)
class CollapseSettings(ConcernSettings):
    """What the `EarlyCollapseCallback` a config asks for watches, and when it stops the rounds."""

    metric: str | None = setting(
        None,
        "Per-round metric watched by the EarlyCollapseCallback: 'validation_nll', a behaviour metric "
        "('refusal_harmful', 'refusal_benign', 'admits_unknown', 'helpful_win_rate', the composite "
        "'alignment_score', or their 'fewshot_' forms), a benchmark metric (e.g. 'truthfulqa_mc1', 'hhh_overall'), "
        "a diagnostic ('sample_entropy', 'sample_distinct_2', ...) or 'train_loss'. Default: 'validation_nll' "
        "when a validation set is used. 'none' turns early stopping off.",
        name="collapse_metric",
    )
    greater_is_better: bool | None = setting(
        None,
        "Direction of `collapse_metric`. Default: known from the name (NLL, self-BLEU and loss: lower is "
        "better; accuracies, entropy and distinct-n: higher is better).",
        name="collapse_greater_is_better",
    )
    patience: int = setting(
        1,
        "Stop after this many rounds in a row whose `collapse_metric` is worse than the best round by more "
        "than `collapse_threshold` (chosen here: 1, the first worsening round; the paper picks the round count on "
        "its validation set).",
        name="collapse_patience",
    )
    threshold: float | None = setting(
        None,
        "The least change that matters: a round counts against `collapse_patience` only when it is worse "
        "than the best by more than this AND by more than `collapse_noise_z` standard errors of the difference. "
        "Default (chosen here): 0.01 for 'validation_nll' (nats per token: a 1 percent change of perplexity), "
        "`behaviour_margin` for a behaviour rate, 0.01 (one point) for other rates and accuracies, 0 for the rest.",
        name="collapse_threshold",
    )
    noise_z: float = setting(
        1.96,
        "How many standard errors of the difference (best round vs this round) a worsening must exceed to "
        "count (chosen here: 1.96, a 95 percent interval). Paired over the same items when the metric keeps per-item "
        "scores (validation NLL, behaviour rates), else from the two rounds' `<metric>_se`. 0 ignores noise.",
        name="collapse_noise_z",
    )
    restore_best_round: bool = setting(
        True,
        "When the rounds stop early, reload the best round's weights so `final_model/` is the best round "
        "(round 0, the starting model, included when `evaluate_start`); with behaviour measured, the best accepted "
        "round before the first one worse than the best beyond the margin.",
    )

    def check(self) -> None:
        if self.patience < 1:
            raise self.field_error(
                "patience", f"must be >= 1 (rounds in a row); got {self.patience}. To turn early stopping off, set "
                "`collapse_metric='none'`."
            )
        if self.threshold is not None and self.threshold < 0:
            raise self.field_error("threshold", f"must be >= 0; got {self.threshold}.")
        if self.noise_z < 0:
            raise self.field_error("noise_z", f"must be >= 0 (0 ignores noise); got {self.noise_z}.")

    def threshold_for(self, metric: str, behaviour_margin: float) -> float:
        """`collapse_threshold`, or the least change that matters for `metric` (see its help and
        docs/curriculum_and_collapse.md): 1% of perplexity for the validation NLL, the acceptance margin for a
        behaviour rate, one point for another rate or accuracy, else 0."""
        if self.threshold is not None:
            return self.threshold
        if metric == "validation_nll":
            return MEANINGFUL_NLL_CHANGE
        if greater_is_better(metric) is not None:
            return behaviour_margin
        if metric.startswith(RATE_PREFIXES):
            return MEANINGFUL_RATE_CHANGE
        return 0.0

    def watched(self, default: str | None) -> str | None:
        """The metric watched: `collapse_metric`, else `default` (the validation NLL when there is a validation set);
        None when early stopping is off."""
        if self.metric == "none":
            return None
        return default if self.metric is None else self.metric


@dataclass
class RoundControl:
    """The callbacks' verdict at the end of a round: read by the round's decision (`trl_soft.decision`), which the
    callbacks then receive (`on_round_decided`); nothing changes it after them."""

    should_stop: bool = False
    stop_reason: str | None = None
    restore_round: int | None = None  # weights to reload before the final model is saved (0 = starting weights)
    # The last round before the worsening that stopped the run: not worse than the best by more than the margin, so
    # with behaviour measured the final model is the best accepted round up to it (`acceptance.final_round`).
    sound_round: int | None = None


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

    def on_round_decided(self, args, decision, **kwargs) -> None:
        """`decision`: the round's `trl_soft.decision.RoundDecision`, recorded; read it, it is not to be changed."""


class EarlyCollapseCallback(SOFTCallback):
    """Stops the rounds when a per-round metric has been worse than its best for `patience` rounds in a row.

    Late SOFT rounds can collapse: the model trains on its own ever sharper outputs and drifts away from good
    answers. The validation metric (by default the validation-set NLL, lower is better) shows it, and so do the
    behaviour metrics (a falling `refusal_harmful`). A round is *bad* when its value is worse than the best so far by
    more than the margin: the larger of `threshold` and `noise_z` standard errors of the difference. The standard
    error is paired (the per-item differences) when both rounds kept per-item scores of the metric (`item_scores`:
    validation NLL, behaviour rates), else it combines the rounds' `<metric>_se`; with neither, only `threshold`
    counts. A round within the margin breaks the streak; a better one becomes the best. After `patience` bad rounds in
    a row the run stops and, with `restore_best_round`, the best round's weights are reloaded so the saved final model
    is the best one; with behaviour measured, the final model is the best accepted round before the bad streak
    (`RoundControl.sound_round`).

    Args:
        metric: a key of the round metrics (`validation_nll`, `truthfulqa_mc1`, `sample_distinct_2`, ...).
        greater_is_better: direction of `metric`.
        patience: consecutive bad rounds before stopping (>= 1).
        threshold: the least worsening that counts (>= 0).
        noise_z: standard errors of the difference a worsening must exceed (>= 0; 1.96 = a 95% interval).
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
        noise_z: float = Z95,
    ):
        if patience < 1:
            raise ValueError(f"EarlyCollapseCallback: `patience` must be >= 1; got {patience}.")
        if threshold < 0:
            raise ValueError(f"EarlyCollapseCallback: `threshold` must be >= 0; got {threshold}.")
        if noise_z < 0:
            raise ValueError(f"EarlyCollapseCallback: `noise_z` must be >= 0; got {noise_z}.")
        self.noise_z = noise_z
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.threshold = threshold
        self.restore_best_round = restore_best_round
        self.include_start = include_start
        self.requires_start_weights = restore_best_round and include_start
        self.reset()

    @classmethod
    def from_settings(
        cls, settings: CollapseSettings, metric: str, greater_is_better: bool, include_start: bool,
        behaviour_margin: float = 0.03,
    ) -> EarlyCollapseCallback:
        """The callback a config asks for: its `CollapseSettings`, the metric watched and its direction."""
        return cls(
            metric=metric,
            greater_is_better=greater_is_better,
            patience=settings.patience,
            threshold=settings.threshold_for(metric, behaviour_margin),
            restore_best_round=settings.restore_best_round,
            include_start=include_start,
            noise_z=settings.noise_z,
        )

    @classmethod
    def from_config(cls, args) -> EarlyCollapseCallback:
        """The callback a `SOFTConfig` asks for (`collapse_*` fields, `restore_best_round`)."""
        settings = args.settings
        return cls.from_settings(
            settings.collapse, settings.collapse_metric, settings.collapse_greater_is_better,
            settings.validation.evaluate_start, settings.acceptance.margin,
        )

    def reset(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.best_round: int | None = None
        self.best_value: float | None = None
        self.best_noise: tuple[float | None, list[float] | None] = (None, None)
        self.bad_rounds = 0
        self.last_margin: tuple[float, str] = (self.threshold, "collapse_threshold")

    def _is_better(self, value: float, reference: float) -> bool:
        return value > reference if self.greater_is_better else value < reference

    def margin(self, se: float | None, items: list[float] | None) -> tuple[float, str]:
        """How much worse than the best a value must be to count, and where that figure comes from."""
        best_se, best_items = self.best_noise
        noise, how = 0.0, ""
        if self.noise_z > 0 and items is not None and best_items is not None and len(items) == len(best_items):
            noise = self.noise_z * paired_difference(best_items, items).se
            how = f"{self.noise_z:g} paired standard errors over {len(items)} items"
        elif self.noise_z > 0 and se is not None and best_se is not None:
            noise = self.noise_z * math.hypot(se, best_se)
            how = f"{self.noise_z:g} standard errors of the difference"
        if noise > self.threshold:
            return noise, how
        return self.threshold, "collapse_threshold"

    def observe(
        self, round_index: int, value: float, se: float | None = None, items: list[float] | None = None
    ) -> bool:
        """Record one round's value (with its standard error or per-item scores, if known); True to stop now."""
        if value is None or not math.isfinite(value):
            # A NaN/inf metric (diverged weights) is the clearest collapse there is.
            value = -math.inf if self.greater_is_better else math.inf
            se, items = None, None
        self.history.append((round_index, value))
        if self.best_value is None or self._is_better(value, self.best_value):
            self.best_round, self.best_value, self.bad_rounds = round_index, value, 0
            self.best_noise = (se, items)
            return False
        self.last_margin = self.margin(se, items)
        gap = (self.best_value - value) if self.greater_is_better else (value - self.best_value)
        self.bad_rounds = self.bad_rounds + 1 if gap > self.last_margin[0] else 0
        return self.bad_rounds >= self.patience

    def _observe_metrics(self, round_index: int, metrics: dict[str, Any]) -> bool:
        se = metrics.get(f"{self.metric}_se")
        items = (metrics.get(ITEM_SCORES) or {}).get(self.metric)
        return self.observe(round_index, metrics[self.metric], se, items)

    def on_soft_begin(self, args, soft_state, **kwargs) -> None:
        """Rebuild the cross-round memory from the manifest (fresh run: round 0 only; resumed run: every round)."""
        self.reset()
        base = soft_state.base_metrics or {}
        if self.include_start and self.metric in base:
            self._observe_metrics(0, base)
        for metrics in soft_state.history:
            if self.metric in metrics:
                self._observe_metrics(metrics["round"], metrics)

    def on_round_end(self, args, round_index: int, metrics: dict[str, Any], control: RoundControl, **kwargs) -> None:
        if self.metric not in metrics:
            raise KeyError(
                f"EarlyCollapseCallback monitors {self.metric!r} but round {round_index} produced only "
                f"{sorted(metrics)}. Choose one of those with `collapse_metric`."
            )
        if not self._observe_metrics(round_index, metrics):
            return
        direction = "higher" if self.greater_is_better else "lower"
        margin, how = self.last_margin
        last = self.history[-1][1]
        control.should_stop = True
        control.stop_reason = (
            f"{self.metric} ({direction} is better) was worse than its best {self.best_value:.6g} (round "
            f"{self.best_round}) by more than the margin for {self.bad_rounds} round(s) in a row; last value "
            f"{last:.6g} at round {round_index}, worse by {abs(last - self.best_value):.4g} > margin {margin:.4g} "
            f"({how})"
        )
        control.sound_round = round_index - self.bad_rounds
        if self.restore_best_round:
            control.restore_round = self.best_round


def with_collapse_callback(callbacks: list | None, settings, has_validation_set: bool) -> list:
    """The user's callbacks plus the `EarlyCollapseCallback` that `settings` (a `SOFTSettings`) asks for, unless the
    user passed one; every watched metric must be one the rounds produce."""
    callbacks = list(callbacks or [])
    watchers = [c for c in callbacks if isinstance(c, EarlyCollapseCallback)]
    if not watchers and settings.collapse_metric is not None:
        callbacks.append(
            EarlyCollapseCallback.from_settings(
                settings.collapse, settings.collapse_metric, settings.collapse_greater_is_better,
                settings.validation.evaluate_start, settings.acceptance.margin,
            )
        )
        watchers = callbacks[-1:]
    produced = set(settings.metric_names())
    for callback in callbacks:
        if isinstance(callback, SOFTCallback):
            produced.update(callback.provides_metrics)
    if not has_validation_set:
        produced -= {"validation_nll", *(m for m in produced if m.startswith("sample_"))}
    for watcher in watchers:
        if watcher.metric not in produced:
            raise ValueError(
                f"EarlyCollapseCallback watches {watcher.metric!r}, which no round of this run produces "
                f"(they produce {sorted(produced)}). Set `collapse_metric` to one of those, or 'none' to turn "
                "early stopping off."
            )
    return callbacks


def round_decision(callbacks: list, args, round_index: int, metrics: dict[str, Any], model, trainer) -> RoundControl:
    """The end of a round for the `SOFTCallback`s: each may add metrics, then each may stop the run."""
    for callback in callbacks:
        callback.on_round_metrics(args, round_index, metrics, model=model, trainer=trainer)
    control = RoundControl()
    for callback in callbacks:
        callback.on_round_end(args, round_index, metrics, control, model=model, trainer=trainer)
    return control


def round_decided(callbacks: list, args, decision, model, trainer) -> None:
    """The round's decision (`trl_soft.decision.RoundDecision`), once recorded, for the `SOFTCallback`s to read."""
    for callback in callbacks:
        callback.on_round_decided(args, decision, model=model, trainer=trainer)


class TrainingLines(TrainerCallback):
    """A round's fine-tuning written to a file or a pipe: in place of the Trainer's tqdm bar (a redraw per step, each
    after a carriage return), one line when the round's training ends and at most one every `progress.LINE_EVERY`
    seconds while it runs (`progress.new_bar`), and, as the bar wrote them, the loss lines of `logging_steps`.
    `label` names the bar (`Round 2/3 train`). Not repeated: the end-of-training summary (the bar's last line and the
    round's result line say it) and the round metrics logged for `report_to` trackers (the result line)."""

    def __init__(self, label: Callable[[], str]):
        self.label = label
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = new_bar(total=state.max_steps, desc=self.label(), unit="step")
            self.bar.update(state.global_step)  # a round resumed from a checkpoint starts there

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if k != "total_flos"}
        if self.bar is None or not logs or "train_runtime" in logs or any(k.startswith("soft/") for k in logs):
            return
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
        say(f"{self.bar.desc}: step {state.global_step}/{state.max_steps}: {figures}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def training_lines(trainer, run: RunProgress) -> RunProgress:
    """Where the output is not drawn on (`progress.interactive()`: a file, a pipe, a CI log), the Trainer's training
    bar becomes `TrainingLines`; `run` (the run's round lines) names the bar and is returned."""
    if not interactive() and not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(TrainingLines(lambda: run.label("train")))
    return run
