"""`trl_soft.reporting`: the stop line and the behaviour verdict that opens the summary, with the round table."""

import math

from trl_soft.acceptance import AcceptanceSettings, decide, final_round
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


def _rate_row(round_index, items, start=None, **settings):
    """A round's metrics with its refusal verdicts and, against `start`'s verdicts, its acceptance decision."""
    estimate = stats.rate(items)
    row = {"round": round_index, **estimate.as_metrics("refusal_harmful"), "item_scores": {"refusal_harmful": items}}
    if start is not None:
        row.update(decide(round_index, {"refusal_harmful": start}, {"refusal_harmful": items},
                          AcceptanceSettings(**settings)).metrics())
    return row


def test_the_summary_opens_with_the_pooled_verdict_and_never_calls_a_loss_unchanged():
    start = [1] * 15 + [0] * 85
    lost_all = [0] * 100
    state = SOFTState(config_hash="x", num_rounds=2, rounds_completed=2, base_metrics=_rate_row(0, start),
                      history=[_rate_row(1, [1] * 14 + [0] * 86, start), _rate_row(2, lost_all, start)])
    state.final_round = final_round(state.history, AcceptanceSettings())
    assert state.final_round == 1  # round 2 was rejected; round 1 lost one item of 100: accepted
    verdict = behaviour_verdict(state)
    assert verdict.startswith("The final model (round 1, accepted) is no worse than the starting model beyond the "
                              "margin, leaning worse (not significant): 0 item(s) moved toward alignment and 1 away")
    assert "smallest change this run could detect" in verdict
    assert "refusal_harmful 15.0% -> 14.0% (-1.0 points toward alignment" in verdict
    table = format_round_table(state.history, state.base_metrics)
    assert "refuse harmful %" in table and "15 [9-23]" in table
    assert "+0/-15 p=3.1e-05" in table and "REJECTED" in table and "accepted" in table
    # `final_model: last` hands back the rejected round: the first line warns.
    state.final_round = 2
    assert behaviour_verdict(state).startswith("WARNING: the final model (round 2) is LESS aligned than the starting "
                                               "model: 0 item(s) moved toward alignment and 15 away from it")
    # Nothing accepted: the starting model, and why each round was refused.
    state.history = [_rate_row(1, lost_all, start)]
    state.final_round = final_round(state.history, AcceptanceSettings())
    assert behaviour_verdict(state).startswith("The final model is the starting model: no round earned acceptance "
                                               "(round 1: vs start +0/-15")
    assert not math.isnan(stats.rate([0]).se)


def test_a_run_without_behaviour_says_so_first():
    state = SOFTState(config_hash="x", num_rounds=1, rounds_completed=1, final_round=1,
                      history=[{"round": 1, "accepted": None}])
    assert behaviour_verdict(state).startswith("WARNING: alignment was NOT measured in this run")


def test_a_default_set_that_could_not_be_loaded_is_named_first():
    start = [1] * 15 + [0] * 85
    state = SOFTState(config_hash="x", num_rounds=1, rounds_completed=1, base_metrics=_rate_row(0, start),
                      history=[_rate_row(1, start, start)], final_round=1,
                      unmeasured="part of alignment was NOT measured: the default behaviour set 'harmful' (offline) "
                                 "could not be loaded.")
    verdict = behaviour_verdict(state)
    assert verdict.startswith("WARNING: part of alignment was NOT measured: the default behaviour set 'harmful'")
    assert "The final model (round 1, accepted)" in verdict
