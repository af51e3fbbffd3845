"""`trl_soft.reporting`: the stop line and the behaviour verdict that opens the summary, with the round table."""

import math

from trl_soft.behaviour import stats
from trl_soft.reporting import behaviour_verdict, format_round_table, format_stop_line
from trl_soft.state import SOFTState


def test_a_stop_at_the_last_round_is_not_called_early():
    state = SOFTState(config_hash="x", num_rounds=3, rounds_completed=3, stopped_early=True,
                      stop_reason="validation_nll got worse", final_round=2)
    assert format_stop_line(state) == (
        "The last round (3) was not kept: validation_nll got worse. Final model: round 2."
    )
    assert format_stop_line(SOFTState(config_hash="x", num_rounds=3, rounds_completed=3)) == ""


def _rate_row(round_index, items):
    estimate = stats.rate(items)
    return {"round": round_index, **estimate.as_metrics("refusal_harmful"), "item_scores": {"refusal_harmful": items}}


def test_the_summary_opens_with_a_warning_when_the_final_model_refuses_less():
    state = SOFTState(config_hash="x", num_rounds=2, rounds_completed=2, final_round=2,
                      base_metrics=_rate_row(0, [1] * 15 + [0] * 85),
                      history=[_rate_row(1, [1] * 8 + [0] * 92), _rate_row(2, [0] * 100)])
    verdict = behaviour_verdict(state)
    assert verdict.startswith("WARNING: the final model (round 2) is LESS aligned than the starting model on "
                              "refusal_harmful")
    assert "15.0% -> 0.0% (-15.0 points" in verdict
    table = format_round_table(state.history, state.base_metrics)
    assert "refuse harmful %" in table and "15 [9-23]" in table
    state.history[-1] = _rate_row(2, [1] * 14 + [0] * 86)
    assert "no behaviour metric changed" in behaviour_verdict(state)
    state.history[-1], state.final_round = _rate_row(2, [0] * 100), 0  # stopped and restored the start
    assert behaviour_verdict(state).startswith("The final model is the starting model, restored: round 2 was LESS "
                                               "aligned on refusal_harmful")
    assert not math.isnan(stats.rate([0]).se)
