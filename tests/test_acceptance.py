"""`trl_soft.acceptance`: a round must earn its place (pooled paired non-inferiority against the starting model), the
final model is the best accepted round, and a rejected round is not built on."""

import os
import signal

import pytest
import torch

from trl_soft.acceptance import (
    AcceptanceSettings,
    decide,
    final_round,
    generating_round,
    rejection_streak,
)

from .conftest import DATA, make_tiny_llama, needs_data, tiny_config
from .test_behaviour import REFUSAL, refusing_model


def scores(lost: int, gained: int, same_yes: int, same_no: int, higher_is_better: bool = True):
    """(before, after) verdict lists: `lost` items aligned before and not after, `gained` the other way."""
    yes, no = (1, 0) if higher_is_better else (0, 1)
    before = [yes] * lost + [no] * gained + [yes] * same_yes + [no] * same_no
    after = [no] * lost + [yes] * gained + [yes] * same_yes + [no] * same_no
    return before, after


def issue_demo():
    """The demo the issue measured: 11 items lost, 3 gained over three sets, no set clearly worse alone."""
    harmful = scores(5, 1, 8, 86)
    unknowable = scores(6, 1, 3, 36)
    benign = scores(0, 1, 0, 109, higher_is_better=False)  # refusing a benign request is the unaligned answer
    start = {"refusal_harmful": harmful[0], "admits_unknown": unknowable[0], "refusal_benign": benign[0]}
    final = {"refusal_harmful": harmful[1], "admits_unknown": unknowable[1], "refusal_benign": benign[1]}
    return start, final


def test_a_loss_spread_over_the_sets_is_worse_pooled_and_the_round_is_rejected():
    start, final = issue_demo()
    decision = decide(3, start, final, AcceptanceSettings())
    comparison = decision.comparison
    assert {m: c.outcome for m, c in comparison.metrics.items()} == {
        "refusal_harmful": "no clear change", "refusal_benign": "no clear change", "admits_unknown": "no clear change",
    }
    pooled = comparison.pooled
    assert (pooled.lost, pooled.gained, pooled.n) == (11, 3, 256)
    assert pooled.p_worse == pytest.approx(0.0287, abs=1e-4)  # exact one-sided sign test on 14 discordant items
    assert comparison.outcome == "worse" and decision.accepted is False
    assert "vs start +3/-11 of 256" in decision.reason
    metrics = decision.metrics()
    assert metrics["accepted"] is False and metrics["vs_start_lost"] == 11 and metrics["vs_start_mde"] > 0


def test_no_change_is_accepted_and_says_what_it_could_have_detected():
    start, _ = issue_demo()
    decision = decide(1, start, start, AcceptanceSettings())
    assert decision.accepted is True and decision.comparison.outcome == "no clear change"
    assert decision.comparison.pooled.mde == pytest.approx((1.6449 + 0.8416) * (1 / 256) ** 0.5 / 256 ** 0.5, rel=1e-3)


def test_the_margin_and_each_watched_metric_can_each_reject():
    before, after = scores(3, 3, 100, 894)  # 1000 items, balanced flips
    loose = decide(1, {"refusal_harmful": before}, {"refusal_harmful": after}, AcceptanceSettings(margin=0.03))
    assert loose.accepted is True
    assert decide(1, {"refusal_harmful": before}, {"refusal_harmful": after}, AcceptanceSettings(margin=0.0)).accepted \
        is False  # non-inferiority with no margin cannot be shown
    # One set alone clearly worse (7 lost, 0 gained: p = 0.008), hidden by a few gains elsewhere (pooled 7/3: p = 0.17).
    harmful = scores(7, 0, 20, 73)
    benign = scores(0, 3, 0, 2000, higher_is_better=False)
    start = {"refusal_harmful": harmful[0], "refusal_benign": benign[0]}
    final = {"refusal_harmful": harmful[1], "refusal_benign": benign[1]}
    decision = decide(2, start, final, AcceptanceSettings())
    assert decision.comparison.pooled.difference.low > -0.03 and decision.comparison.outcome == "no clear change"
    assert decision.accepted is False and "refusal_harmful" in decision.reason
    assert decide(2, start, final, AcceptanceSettings(watch=("refusal_benign",))).accepted is True


def test_unmeasured_rounds_get_no_decision():
    decision = decide(1, None, {}, AcceptanceSettings())
    assert decision.accepted is None and decision.metrics() == {"accepted": None, "decision": decision.reason}


def row(index, accepted, diff=0.0):
    return {"round": index, "accepted": accepted, "vs_start_diff": diff}


def test_the_final_model_is_the_best_accepted_round_without_any_stop():
    settings = AcceptanceSettings()
    history = [row(1, True, 0.01), row(2, True, 0.02), row(3, False, -0.05)]
    assert final_round(history, settings) == 2
    assert final_round([row(1, True, 0.02), row(2, True, 0.02)], settings) == 2  # a tie goes to the later round
    assert final_round([row(1, False, -0.04), row(2, False, -0.01)], settings) == 0  # none accepted: the start
    assert final_round(history, AcceptanceSettings(final_model="last")) == 3
    assert final_round(history, settings, collapse_round=1) == 1  # a collapse stop makes later rounds ineligible
    unmeasured = [row(1, None), row(2, None)]
    assert final_round(unmeasured, settings) == 2 and final_round(unmeasured, settings, collapse_round=1) == 1


def test_a_rejected_round_is_not_built_on_unless_asked():
    settings = AcceptanceSettings()
    assert generating_round([], settings) is None
    assert generating_round([row(1, True), row(2, False)], settings) == 1
    assert generating_round([row(1, False)], settings) == 0
    assert generating_round([row(1, True), row(2, True)], settings) == 2
    assert generating_round([row(1, True), row(2, False)], AcceptanceSettings(generate_from="last")) == 2
    assert rejection_streak([row(1, True), row(2, False), row(3, False)]) == 2
    assert rejection_streak([row(1, False), row(2, True)]) == 0


# ---- in a run -------------------------------------------------------------------------------------------------------
@needs_data
def test_a_rejected_round_is_kept_on_resume_and_the_next_round_starts_from_the_start(tmp_path, tokenizer):
    """A tiny model taught to refuse; a destructive learning rate makes round 1 babble, so round 1 is rejected. The
    run is interrupted (SIGTERM) right after round 1 is recorded; the resumed run keeps the rejection and generates
    round 2 with the starting model (greedy: the taught refusal), not with the rejected round; round 2 is rejected
    too, two rejections in a row stop the run, and the final model is the starting one."""
    from datasets import Dataset
    from safetensors.torch import load_file

    from trl_soft import SOFTCallback, SOFTTrainer
    from trl_soft.errors import SOFTInterrupted
    from trl_soft.state import SOFTState, read_jsonl

    model = refusing_model(tokenizer)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "out"

    class Interrupt(SOFTCallback):
        def on_round_end(self, args, round_index, metrics, control, **kwargs):
            if round_index == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    def make(model, callbacks=()):
        args = tiny_config(
            out, num_rounds=2, learning_rate=5.0, max_grad_norm=0.0, prompt_format="plain", validation_path="none",
            diagnostics_num_prompts=0, behaviour_eval=["harmful"], behaviour_harmful_limit=10, behaviour_fewshot="none",
            behaviour_max_new_tokens=12, benchmark_data_dir=str(DATA), collapse_metric="none", rejection_patience=2,
            generation_max_new_tokens=16,
        )
        prompts = Dataset.from_list([{"prompt": f"q {i}"} for i in range(8)])
        return SOFTTrainer(model=model, args=args, train_dataset=prompts, processing_class=tokenizer,
                           callbacks=list(callbacks))

    with pytest.raises(SOFTInterrupted):
        make(model, [Interrupt()]).train()
    state = SOFTState.load(out)
    assert state.rounds_completed == 1 and state.history[0]["accepted"] is False
    assert state.history[0]["vs_start_lost"] >= 5 and state.final_round == 0
    rejected_answers = [r["answer"] for r in read_jsonl(out / "round_1" / "behaviour.jsonl")]
    assert sum(a.startswith("I'm sorry") for a in rejected_answers) <= 2  # the rejected model babbles

    resumed = make(make_tiny_llama(tokenizer))  # weights come from the run folder
    resumed.train(resume_from_checkpoint=True)
    state = SOFTState.load(out)
    assert [m["accepted"] for m in state.history] == [False, False]  # round 1's decision kept, round 2 rejected
    assert state.stopped_early and "2 rejected round(s) in a row" in state.stop_reason and state.final_round == 0
    round_2 = [r["response"] for r in read_jsonl(out / "round_2" / "generations.jsonl")]
    # generated by the starting model, which refuses (the rejected round-1 model would have babbled)
    assert all(r.startswith(REFUSAL.strip()[:9]) for r in round_2), round_2
    final = load_file(str(out / "final_model" / "model.safetensors"))
    assert all(torch.equal(final[k], start[k]) for k in final if k in start)
    summary = (out / "summary.md").read_text()
    assert summary.startswith("The final model is the starting model: no round earned acceptance (round 1: vs start")
    assert "REJECTED" in summary
