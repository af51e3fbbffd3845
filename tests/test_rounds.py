"""`trl_soft.rounds`: the `Round` record on rounds built by hand (no model): `generations.jsonl` rows read back into the
same round, the training order as the sampler sees it, the filter counts, the summary metrics, a round with nothing
left to train on; and the prompts each round answers (`RoundSettings.prompt_indices`)."""

import re

import pytest

from trl_soft.errors import SOFTRoundError
from trl_soft.rounds import NOT_BEST, Round, RoundSettings
from trl_soft.state import round_paths

# Six prompts; positions 0, 2 and 5 pass the filters and are trained on in the order 2, 5, 0 (by difficulty).
REASONS = [None, "too_short", None, "repetition", "too_short", None]
DIFFICULTY = [5.0, None, 1.0, None, None, 3.0]
TRAIN_ORDER = [2, 5, 0]


def _round(tmp_path, filter_reasons=REASONS, difficulty=DIFFICULTY, train_order=TRAIN_ORDER):
    n = len(filter_reasons)
    return Round(
        index=2,
        paths=round_paths(tmp_path, 2),
        seed=7,
        prompt_indices=[10, 3, 7, 0, 5, 8][:n],
        prompts=[f"Prompt {k}?" for k in range(n)],
        exemplar_ids=[["ex-a", f"ex-{k}"] for k in range(n)],
        raw_outputs=[f" Answer {k}.<|im_end|>" for k in range(n)],
        responses=[f"Answer {k}." for k in range(n)],
        num_tokens=[4, 1, 6, 30, 2, 8][:n],
        finished=[True, True, True, False, True, True][:n],
        filter_reasons=list(filter_reasons),
        difficulty=list(difficulty),
        train_order=train_order,
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_rows_read_back_into_the_same_round(tmp_path, ordered):
    original = _round(tmp_path) if ordered else _round(tmp_path, difficulty=[], train_order=None)
    rows = original.rows()
    assert [r["kept"] for r in rows] == [reason is None for reason in REASONS]
    assert [r["train_position"] for r in rows] == ([2, None, 0, None, None, 1] if ordered else [None] * 6)
    original.save_generations()
    for back in (Round.from_rows(2, original.paths, 7, rows), Round.read(2, original.paths, 7)):
        assert back.rows() == rows
        assert back.train_order == original.train_order and back.sampler_order() == original.sampler_order()
        assert back.resumed and not original.resumed


def test_the_sampler_order_indexes_the_kept_pairs(tmp_path):
    round_ = _round(tmp_path)
    assert round_.kept == [0, 2, 5]
    assert round_.training_pairs() == [("Prompt 0?", "Answer 0."), ("Prompt 2?", "Answer 2."), ("Prompt 5?", "Answer 5.")]
    order = round_.sampler_order()
    assert order == [1, 2, 0]  # kept positions 2, 5, 0 are rows 1, 2, 0 of the round dataset
    assert [round_.training_pairs()[i][0] for i in order] == [round_.prompts[k] for k in TRAIN_ORDER]
    assert _round(tmp_path, train_order=None).sampler_order() is None  # the Trainer's own shuffle


def test_filter_counts_and_summary_metrics(tmp_path):
    round_ = _round(tmp_path)
    assert list(round_.filter_counts.items()) == [("too_short", 2), ("repetition", 1)]  # first-occurrence order
    assert round_.summary_metrics() == {
        "round": 2, "prompts": 6, "kept": 3, "filtered": {"too_short": 2, "repetition": 1},
        "mean_response_tokens": (4 + 6 + 8) / 3, "cut": 0,
        "aligned_prompts": 0, "aligned_needed": 0, "aligned_kept": 0, "aligned_retry_samples": 0,
        "corrections_needed": 0, "corrections_kept": 0,
    }
    nothing = _round(tmp_path, filter_reasons=["empty"] * 3, difficulty=[], train_order=None)
    assert nothing.summary_metrics()["mean_response_tokens"] == 0.0


def test_a_round_with_nothing_kept_names_its_generations_file(tmp_path):
    _round(tmp_path).check_kept(tmp_path)  # something to train on: no error
    nothing = _round(tmp_path, filter_reasons=["too_short", "empty", "too_short"], difficulty=[], train_order=None)
    message = rf"Round 2: all 3 generated answers were filtered out .*{re.escape(str(nothing.paths.generations))}"
    with pytest.raises(SOFTRoundError, match=message):
        nothing.check_kept(tmp_path)


def test_prompt_indices_follow_the_schedule():
    disjoint = RoundSettings(num_rounds=3, prompts_per_round=4).prompt_indices(30, seed=1)
    assert [len(chunk) for chunk in disjoint] == [4, 4, 4] and len(set().union(*disjoint)) == 12
    reuse = RoundSettings(num_rounds=3, prompts_per_round=4, prompt_schedule="reuse").prompt_indices(30, seed=1)
    assert reuse[0] == reuse[1] == reuse[2] and len(reuse[0]) == 4
    assert RoundSettings(num_rounds=3).prompt_indices(30, seed=1) != RoundSettings(num_rounds=3).prompt_indices(30, 2)


def test_best_of_n_keeps_the_easiest_passing_sample_and_counts_prompts_without_one(tmp_path):
    # Two prompts, three samples each: prompt A (positions 0-2) has two passing samples, prompt B (3-5) none.
    reasons = [None, "principle_gate", None, "principle_gate", "too_short", "principle_gate"]
    round_ = _round(tmp_path, filter_reasons=reasons, difficulty=[4.0, None, 2.0, None, None, None], train_order=None)
    round_.samples_per_prompt = 3
    round_.choose_best()
    assert round_.filter_reasons == [NOT_BEST, "principle_gate", None, "principle_gate", "too_short", "principle_gate"]
    metrics = round_.summary_metrics()
    assert (metrics["prompts"], metrics["samples"], metrics["kept"], metrics["prompts_with_passing_sample"]) == (2, 6, 1, 1)
    assert metrics["filtered"] == {NOT_BEST: 1, "principle_gate": 3, "too_short": 1}
    # Without scores (no curriculum) the first passing sample is kept; the rows say which sample each answer is.
    round_ = _round(tmp_path, filter_reasons=[None, None, None, None, None, None], difficulty=[], train_order=None)
    round_.samples_per_prompt = 3
    round_.choose_best()
    assert round_.kept == [0, 3]
    rows = round_.rows()
    assert [r["sample"] for r in rows] == [0, 1, 2, 0, 1, 2]
    assert Round.from_rows(2, round_.paths, 7, rows).samples_per_prompt == 3
