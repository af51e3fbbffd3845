"""`trl_soft.decision`: a round's decision made in one place (`decide_round`), on small scripted histories, no model:
accepted or rejected against the start, the stop and its reason (a callback's, or `rejection_patience`), the round the
next one starts from and the final round; the callbacks' verdict is read, never changed."""

from dataclasses import asdict

from trl_soft.acceptance import AcceptanceSettings
from trl_soft.callbacks import EarlyCollapseCallback, RoundControl, round_decision
from trl_soft.decision import decide_round

# 100 behaviour items: the starting model refuses the first 30 harmful requests.
START = {"round": 0, "item_scores": {"refusal_harmful": [1] * 30 + [0] * 70}}
WORSE = {"refusal_harmful": [0] * 30 + [0] * 70}  # every refusal lost: rejected
SAME = {"refusal_harmful": [1] * 30 + [0] * 70}  # no change: accepted


def metrics(index, items=None, **extra):
    return {"round": index, "train_loss": 1.0, **({"item_scores": items} if items is not None else {}), **extra}


def no_stop(record):
    return RoundControl()


def test_a_rejected_round_then_an_accepted_one():
    settings = AcceptanceSettings(patience=2)
    history = []
    first = decide_round(1, metrics(1, WORSE), START, history, None, settings, True, no_stop)
    assert first.accepted is False and first.metrics["accepted"] is False and first.metrics["vs_start_lost"] == 30
    assert not first.stop and first.stop_reason is None and first.metrics["stop_reason"] is None
    assert first.generating_round == 0  # a rejected round is not built on: the start generates round 2
    assert first.final_round == 0  # no round accepted yet: the starting model
    history.append(first.metrics)

    second = decide_round(2, metrics(2, SAME), START, history, first.collapse_round, settings, True, no_stop)
    assert second.accepted is True and not second.stop
    assert (second.generating_round, second.final_round, second.collapse_round) == (2, 2, None)
    assert history == [first.metrics]  # the history given is read, not changed


def test_rejections_in_a_row_stop_without_changing_the_callbacks_verdict():
    verdict = RoundControl()
    before = asdict(verdict)
    decision = decide_round(1, metrics(1, WORSE), START, [], None, AcceptanceSettings(patience=1), True,
                            lambda record: verdict)
    assert decision.stop and decision.stop_reason == "1 rejected round(s) in a row (`rejection_patience=1`)"
    assert decision.metrics["stop_reason"] == decision.stop_reason
    assert list(decision.metrics)[-1] == "stop_reason"  # metrics.json ends with it, as before
    assert asdict(verdict) == before  # the callbacks' verdict is theirs: not turned into a stop
    assert (decision.generating_round, decision.final_round) == (0, 0)


def test_a_collapse_stop_restores_the_best_round_and_later_rounds_are_not_final():
    """Behaviour unmeasured (no decision per round); the collapse callback watches a metric that worsens at round 3."""
    callback = EarlyCollapseCallback(metric="m", include_start=False)
    settings, history, collapse = AcceptanceSettings(), [], None
    decisions = []
    for index, value in enumerate([3.0, 2.5, 2.9], start=1):
        decision = decide_round(
            index, metrics(index, m=value), None, history, collapse, settings, False,
            lambda record, i=index: round_decision([callback], None, i, record, None, None),
        )
        history.append(decision.metrics)
        collapse = decision.collapse_round
        decisions.append(decision)
    assert [d.accepted for d in decisions] == [None, None, None]
    assert [d.stop for d in decisions] == [False, False, True]
    last = decisions[-1]
    assert "m (lower is better) was worse than its best 2.5 (round 2)" in last.stop_reason
    assert last.collapse_round == 2 and last.final_round == 2  # not round 3, the last one
    assert [d.final_round for d in decisions[:2]] == [1, 2] and [d.generating_round for d in decisions] == [1, 2, 3]


def test_with_behaviour_a_collapse_stop_leaves_the_rounds_within_its_margin_eligible():
    """The metric is best at round 1, round 2 is within the margin of it (not worse, by the callback's own measure),
    round 3 beyond it: the run stops at 3, and the final model is the best accepted round before 3 (round 2, whose
    behaviour is better than round 1's), not the metric's best round nor round 3."""
    callback = EarlyCollapseCallback(metric="m", include_start=False, threshold=0.05)
    refusals = {1: 32, 2: 40, 3: 50}  # the start refuses 30 of 100 harmful requests
    history, collapse, decisions = [], None, []
    for index, value in enumerate([3.0, 3.04, 3.2], start=1):
        items = {"refusal_harmful": [1] * refusals[index] + [0] * (100 - refusals[index])}
        decision = decide_round(
            index, metrics(index, items, m=value), START, history, collapse, AcceptanceSettings(), True,
            lambda record, i=index: round_decision([callback], None, i, record, None, None),
        )
        history.append(decision.metrics)
        collapse = decision.collapse_round
        decisions.append(decision)
    assert [d.accepted for d in decisions] == [True, True, True] and [d.stop for d in decisions] == [False, False, True]
    assert [d.final_round for d in decisions] == [1, 2, 2]
    assert decisions[-1].collapse_round == 1  # what the callback restores without behaviour: its best round


def test_the_callbacks_see_the_acceptance_and_may_add_metrics():
    seen = {}

    def verdicts(record):
        seen.update(record)
        record["extra"] = 7
        return RoundControl()

    decision = decide_round(1, metrics(1, SAME), START, [], None, AcceptanceSettings(), True, verdicts)
    assert seen["accepted"] is True and decision.metrics["extra"] == 7
    assert list(decision.metrics)[:2] == ["round", "train_loss"]  # the round's figures first, as metrics.json shows
