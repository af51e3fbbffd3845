"""`trl_soft.callbacks`: the `EarlyCollapseCallback` decision on scripted metric sequences (noise-aware on per-item
scores), the callbacks a trainer refuses before any model loads, and real runs that stop and restore."""

import json

import pytest
import torch
from safetensors.torch import load_file

from trl_soft import EarlyCollapseCallback, RoundControl, SOFTCallback, SOFTTrainer
from trl_soft.state import SOFTState

from .conftest import UNLOADABLE, make_tiny_llama, prompt_dataset, tiny_config


def _stop_round(values, **kwargs):
    """Feed a metric sequence (rounds 1, 2, ...); the round at which the callback stops, or None."""
    callback = EarlyCollapseCallback(metric="m", **kwargs)
    for round_index, value in enumerate(values, start=1):
        control = RoundControl()
        callback.on_round_end(None, round_index, {"m": value}, control)
        if control.should_stop:
            return round_index, control.restore_round
    return None, None


@pytest.mark.parametrize(
    ("values", "kwargs", "expected"),
    [
        ([3.0, 2.5, 2.6], {}, (3, 2)),  # first worsening round stops, best is round 2
        ([3.0, 2.5, 2.6, 2.4, 2.7, 2.8], {"patience": 2}, (6, 4)),  # streak of two bad rounds
        ([3.0, 2.5, 2.6, 2.4, 2.7], {"patience": 2}, (None, None)),  # a new best breaks the streak
        ([3.0, 2.5, 2.55, 2.58], {"threshold": 0.1}, (None, None)),  # within the tolerance
        ([3.0, 2.5, 2.55, 2.7], {"threshold": 0.1}, (4, 2)),
        ([0.20, 0.25, 0.22], {"greater_is_better": True}, (3, 2)),
        ([3.0, float("nan")], {}, (2, 1)),  # diverged weights count as collapse
        ([3.0, 2.5, 2.6], {"restore_best_round": False}, (3, None)),
    ],
)
def test_stops_at_the_right_round(values, kwargs, expected):
    assert _stop_round(values, **kwargs) == expected


def test_memory_is_rebuilt_from_the_manifest_on_resume():
    callback = EarlyCollapseCallback(metric="m", patience=2)
    state = SOFTState(config_hash="x", num_rounds=5, base_metrics={"round": 0, "m": 3.0},
                      history=[{"round": 1, "m": 2.0}, {"round": 2, "m": 2.2}])
    callback.on_soft_begin(None, state)
    assert (callback.best_round, callback.bad_rounds) == (1, 1)
    control = RoundControl()
    callback.on_round_end(None, 3, {"m": 2.3}, control)
    assert control.should_stop and control.restore_round == 1


def test_a_missing_metric_is_named():
    with pytest.raises(KeyError, match="'m'.*collapse_metric"):
        EarlyCollapseCallback(metric="m").on_round_end(None, 1, {"validation_nll": 1.0}, RoundControl())


def test_a_watched_metric_no_round_produces_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'reward'.*collapse_metric"):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(tmp_path / "out"), train_dataset=prompt_dataset(12),
                    callbacks=[EarlyCollapseCallback(metric="reward")])


def test_patience_below_one_is_refused():
    with pytest.raises(ValueError, match="patience"):
        EarlyCollapseCallback(patience=0)


def _observe(callback, rounds):
    for round_index, (value, items) in enumerate(rounds):
        control = RoundControl()
        metrics = {"m": value, "item_scores": {"m": items}} if items is not None else {"m": value}
        if round_index == 0:
            callback.observe(0, value, None, items)
            continue
        callback.on_round_end(None, round_index, metrics, control)
        if control.should_stop:
            return round_index, control
    return None, None


def test_a_change_within_the_noise_does_not_stop_and_one_beyond_it_does():
    base = [1] * 14 + [0] * 86
    slight = [1] * 12 + [0] * 88  # 2 fewer refusals of 100: noise
    collapsed = [0] * 100
    callback = EarlyCollapseCallback(metric="m", greater_is_better=True)
    assert _observe(callback, [(0.14, base), (0.12, slight)]) == (None, None)
    callback = EarlyCollapseCallback(metric="m", greater_is_better=True)
    stopped, control = _observe(callback, [(0.14, base), (0.0, collapsed)])
    assert stopped == 1 and control.restore_round == 0
    assert "0.14" in control.stop_reason and "paired standard errors over 100 items" in control.stop_reason
    # With noise ignored, the smallest worsening counts, as before.
    callback = EarlyCollapseCallback(metric="m", greater_is_better=True, noise_z=0)
    assert _observe(callback, [(0.14, base), (0.12, slight)])[0] == 1


def test_a_validation_nll_equal_to_four_digits_does_not_stop():
    # The case that stopped TRL's sft.py with SOFTTrainer after round 1: 3.0239 'worse' than 3.0239.
    items_best = [2.5 + 0.01 * i for i in range(60)]
    items_now = [x + (0.002 if i % 2 else -0.0018) for i, x in enumerate(items_best)]
    callback = EarlyCollapseCallback(metric="m")
    assert _observe(callback, [(3.02391, items_best), (3.02394, items_now)]) == (None, None)


class ScriptedMetric(SOFTCallback):
    """Adds a per-round metric from a fixed list: the callback's input is known in advance."""

    provides_metrics = ("scripted",)

    def __init__(self, values):
        self.values = values

    def on_round_metrics(self, args, round_index, metrics, **kwargs):
        metrics["scripted"] = self.values[round_index - 1]


def _tensors(folder):
    return load_file(str(folder / "model.safetensors"))


def test_scripted_run_stops_at_the_right_round_and_restores_the_best_weights(tmp_path, tokenizer):
    out = tmp_path / "out"
    trainer = SOFTTrainer(
        model=make_tiny_llama(tokenizer),
        args=tiny_config(out, num_rounds=5),
        train_dataset=prompt_dataset(15),
        processing_class=tokenizer,
        callbacks=[ScriptedMetric([3.0, 2.5, 2.7, 2.9, 1.0]),
                   EarlyCollapseCallback(metric="scripted", patience=2, include_start=False)],
    )
    trainer.train()
    state = SOFTState.load(out)
    assert state.stopped_early and state.rounds_completed == 4 and state.final_round == 2
    assert "scripted" in state.stop_reason and "round 2" in state.stop_reason
    assert not (out / "round_5").exists() and not (out / "round_0").exists()
    final, best, last = _tensors(out / "final_model"), _tensors(out / "round_2" / "model"), _tensors(
        out / "round_4" / "model")
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)
    assert "Stopped early after round 4 of 5" in (out / "summary.md").read_text()
    assert "Final model: round 2" in (out / "final_model" / "README.md").read_text()
    assert json.loads((out / "round_4" / "metrics.json").read_text())["stop_reason"] == state.stop_reason

    # Resuming a stopped run does not start round 5.
    again = SOFTTrainer(model=make_tiny_llama(tokenizer), args=tiny_config(out, num_rounds=5),
                        train_dataset=prompt_dataset(15), processing_class=tokenizer,
                        callbacks=[ScriptedMetric([3.0, 2.5, 2.7, 2.9, 1.0]),
                                   EarlyCollapseCallback(metric="scripted", patience=2, include_start=False)])
    again.train(resume_from_checkpoint=True)
    assert not (out / "round_5").exists()
    final = _tensors(out / "final_model")
    assert all(torch.equal(final[k], best[k]) for k in final)


def test_a_destructive_learning_rate_is_stopped_and_the_starting_model_restored(tmp_path, tokenizer):
    out = tmp_path / "out"
    model = make_tiny_llama(tokenizer)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SOFTTrainer(
        model=model,
        args=tiny_config(out, num_rounds=3, learning_rate=5.0, max_grad_norm=0.0),
        train_dataset=prompt_dataset(12),
        processing_class=tokenizer,
    )
    trainer.train()
    state = SOFTState.load(out)
    assert state.stopped_early and state.rounds_completed == 1 and state.final_round == 0
    assert state.history[0]["validation_nll"] > state.base_metrics["validation_nll"]
    final = _tensors(out / "final_model")
    round_0 = _tensors(out / "round_0" / "model")
    assert all(torch.equal(final[k], round_0[k]) for k in final)
    assert all(torch.equal(final[k], start[k]) for k in final if k in start)
