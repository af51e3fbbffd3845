"""The behaviour verdict that opens the summary (the final model against the starting model, pooled and per metric,
the held-out confirmation) and the line saying why the rounds stopped early."""

from __future__ import annotations

from typing import Any

from .. import acceptance
from ..behaviour.compare import leaning_p
from ..behaviour.settings import METRICS
from ..behaviour.stats import ITEM_SCORES
from ..state import SOFTState
from .table import vs_start


def final_model_name(state: SOFTState) -> str:
    """"the starting model", "round 2", or "round 2, its change from the start scaled by 0.5" (`final_interpolation`)."""
    if state.final_round == 0:
        return "the starting model"
    t = state.interpolated_by
    scale = f"{t:g}" if isinstance(t, (int, float)) else str(t)  # a manifest read back may hold anything
    return f"round {state.final_round}" + (f", its change from the start scaled by {scale}" if t else "")


def format_stop_line(state: SOFTState) -> str:
    """One sentence on why the rounds ended early and which round's weights are final ("" if they did not)."""
    if not state.stopped_early:
        return ""
    final = final_model_name(state)
    if state.rounds_completed >= state.num_rounds:  # the last round itself was the bad one: nothing was skipped
        return f"The last round ({state.rounds_completed}) was not kept: {state.stop_reason}. Final model: {final}."
    return (
        f"Stopped early after round {state.rounds_completed} of {state.num_rounds}: {state.stop_reason}. "
        f"Final model: {final}."
    )


def _metric_line(metric: str, change: dict[str, Any]) -> str:
    """One behaviour metric, start -> final, paired: rate, the change with its interval, items each way, the MDE."""
    before, after = (change["before"], change["after"]) if METRICS[metric][2] else (1 - change["before"],
                                                                                     1 - change["after"])
    return (
        f"{metric} {100 * before:.1f}% -> {100 * after:.1f}% ({100 * change['diff']:+.1f} points toward alignment, "
        f"95% CI [{100 * change['low']:+.1f}, {100 * change['high']:+.1f}]; +{change['gained']}/-{change['lost']} "
        f"of {change['n']} items; detectable: {100 * change['mde']:.1f} points): {change['outcome']}"
    )


def behaviour_verdict(state: SOFTState) -> str:
    """The summary's opening: which round is the final model, whether it earned acceptance, and how it compares with
    the starting model, pooled over every behaviour item and per metric (paired, item by item). It never calls a
    model "like the starting model" when the items lean away from alignment, and it warns when alignment was not
    measured or the final model was not chosen by the acceptance rule."""
    if not state.history:
        return ""
    base = state.base_metrics or {}
    unmeasured = state.unmeasured or ""
    if not acceptance.measured(state.history) and not (base.get(ITEM_SCORES) or {}).keys() & set(METRICS):
        scaled = f" Final model: {final_model_name(state)}." if state.interpolated_by else ""
        return ("WARNING: alignment was NOT measured in this run, so nothing checked that the final model is no less "
                f"aligned than the starting model.{scaled} {unmeasured}").strip()
    final = state.final_round if state.final_round is not None else state.rounds_completed
    row = next((m for m in state.history if m.get("round") == final), None)
    verdict = _verdict_on(state, final, row)
    if state.interpolated_by and final:
        verdict = (f"{verdict}\n\nThe final model is {final_model_name(state)} (`final_interpolation`); the figures "
                   f"above are of round {final} as trained.")
    if state.confirmation:
        verdict = (f"{confirmation_verdict(state.confirmation, final_model_name(state))}\n\nOn the selection items "
                   f"(the ones that chose it): {verdict}")
    return f"WARNING: {unmeasured}\n\n{verdict}" if unmeasured else verdict


def confirmation_verdict(held: dict[str, Any], name: str | None = None) -> str:
    """The held-out verdict: the final model (`name`, default "round k") against the start on the behaviour items no
    decision of the run saw."""
    final = held["final_round"]
    who = "the starting model itself (no round was accepted)" if final == 0 else name or f"round {final}"
    figures = (
        f"{held['gained']} item(s) moved toward alignment and {held['lost']} away from it, of {held['n']} "
        f"(one-sided exact p = {leaning_p(held):.3g}); mean change {100 * held['diff']:+.1f} points, 95% CI "
        f"[{100 * held['low']:+.1f}, {100 * held['high']:+.1f}]; smallest detectable change {100 * held['mde']:.1f} "
        "points"
    )
    outcome = {"better": "MORE aligned than", "worse": "LESS aligned than"}.get(held["outcome"], "not measurably "
                                                                                         "different from")
    head = "WARNING: " if held["outcome"] == "worse" else ""
    return (f"{head}Held-out verdict: the final model ({who}) is {outcome} the starting model on {held['n']} behaviour "
            f"items that no decision of this run saw: {figures}.")


def _verdict_on(state: SOFTState, final: int, row: dict[str, Any] | None) -> str:
    """The verdict on round `final` (its metrics `row`) against the starting model."""
    if final == 0 or row is None:
        rejected = [m for m in state.history if m.get(acceptance.ACCEPTED) is False]
        why = "; ".join(f"round {m['round']}: {m.get(acceptance.DECISION, 'rejected')}" for m in rejected)
        return f"The final model is the starting model: no round earned acceptance ({why or 'no decision'})."
    pooled = vs_start(row)
    if pooled.get("n") is None:
        return f"Final model: round {final} (no acceptance decision: {row.get(acceptance.DECISION, '')})."
    figures = (
        f"{pooled['gained']} item(s) moved toward alignment and {pooled['lost']} away from it, of {pooled['n']} "
        f"(one-sided exact p = {leaning_p(pooled):.3g}); mean change {100 * pooled['diff']:+.1f} points, 95% CI "
        f"[{100 * pooled['low']:+.1f}, {100 * pooled['high']:+.1f}]; the smallest change this run could detect: "
        f"{100 * pooled['mde']:.1f} points"
    )
    accepted = row.get(acceptance.ACCEPTED)
    # with `final_interpolation` these figures are of the round as trained, not of the final model
    who = f"round {final} as trained" if state.interpolated_by else f"the final model (round {final})"
    chosen = (f"Round {final} as trained (accepted)" if state.interpolated_by
              else f"The final model (round {final}, accepted)")
    if pooled["p_worse"] < acceptance.POOLED_ALPHA:
        head = f"WARNING: {who} is LESS aligned than the starting model: {figures}."
    elif accepted is not True:
        head = (f"WARNING: {who} did not earn acceptance (`final_model: last`): {figures}. "
                f"Decision: {row.get(acceptance.DECISION, '')}.")
    elif pooled["p_better"] < acceptance.POOLED_ALPHA:
        head = f"{chosen} is MORE aligned than the starting model: {figures}."
    else:
        lean = pooled["lost"] > pooled["gained"]
        head = (f"{chosen} is no worse than the starting model beyond the margin"
                f"{', leaning worse (not significant)' if lean else ''}: {figures}.")
    lines = [_metric_line(metric, change) for metric, change in (pooled.get("metrics") or {}).items()]
    return head + ("\n\n" + "\n".join(f"- {line}" for line in lines) if lines else "")


def verdict_head(state: SOFTState) -> str:
    """The verdict without its per-metric lines (those are in summary.md): what the end of a run prints first."""
    return "\n".join(line for line in behaviour_verdict(state).splitlines() if not line.startswith("- ")).strip()
