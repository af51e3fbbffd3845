"""The end of a round, decided in one place: `decide_round` returns a `RoundDecision`.

Given the round's metrics, the starting model's metrics, the history of the rounds before it and the callbacks'
verdicts, it says, in this order:

1. whether the round is accepted (`acceptance.against_start`: its behaviour items against the start's; None when
   behaviour is not measured), which the round's metrics record and the callbacks then see;
2. the callbacks' verdicts (`callbacks.round_decision`: each `SOFTCallback` may add metrics, then may stop the run,
   with the round whose weights to restore), read here, never changed;
3. whether the run stops and why: a callback's stop, else `rejection_patience` rejected rounds in a row;
4. the round the next one starts from (`acceptance.generating_round`) and the final round (`acceptance.final_round`,
   rounds after the last one a collapse stop found sound not eligible): computed here and nowhere else.

The decision is a value: the run store records it (`RunStore.record`: the round's metrics file and the manifest), the
trainer acts on it (stop, load the weights the next round starts from), and the callbacks receive it
(`SOFTCallback.on_round_decided`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .acceptance import AcceptanceSettings, Decision, against_start, final_round, generating_round, rejection_streak
from .callbacks import RoundControl


@dataclass(frozen=True)
class RoundDecision:
    """One round's decision (see the module docstring).

    `metrics` is the round's record as `metrics.json` and the manifest keep it: its figures, the acceptance, what the
    callbacks added, and `stop_reason` (None unless the run stops here). `collapse_round`: the round a stopping
    callback restores, or the one an earlier stop restored (None: none). `generating_round`: the round whose weights
    the next round starts from (0: the starting model). `final_round`: the round the final model is, as of now."""

    round: int
    acceptance: Decision
    metrics: dict[str, Any]
    stop: bool
    stop_reason: str | None
    collapse_round: int | None
    generating_round: int
    final_round: int

    @property
    def accepted(self) -> bool | None:
        return self.acceptance.accepted


def decide_round(
    index: int,
    metrics: Mapping[str, Any],
    start_metrics: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]],
    collapse_round: int | None,
    settings: AcceptanceSettings,
    measured_behaviour: bool,
    verdicts: Callable[[dict[str, Any]], RoundControl],
) -> RoundDecision:
    """Round `index`'s decision. `history`: the rounds recorded before it (a row for `index` is replaced);
    `collapse_round`: what an earlier stop restored; `verdicts(metrics)`: the callbacks' verdicts on the round's
    metrics (which they may add to), given the acceptance already in them."""
    acceptance = against_start(index, start_metrics, metrics, settings, measured_behaviour)
    record = {**metrics, **acceptance.metrics()}
    verdict = verdicts(record)
    rows = [m for m in history if m.get("round") != index] + [record]
    stop, reason = verdict.should_stop, verdict.stop_reason
    if stop and verdict.restore_round is not None:
        collapse_round = verdict.restore_round
    streak = rejection_streak(rows)
    if not stop and streak >= settings.patience:
        stop, reason = True, f"{streak} rejected round(s) in a row (`rejection_patience={settings.patience}`)"
    record["stop_reason"] = reason if stop else None
    return RoundDecision(
        round=index, acceptance=acceptance, metrics=record, stop=stop, stop_reason=reason if stop else None,
        collapse_round=collapse_round, generating_round=generating_round(rows, settings),
        final_round=final_round(rows, settings, collapse_round, verdict.sound_round if stop else None),
    )
