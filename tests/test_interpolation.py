"""`final_interpolation`: the returned model holds the chosen round's change from the start, scaled; on saved files
(full weights and LoRA adapters), checked before round 1, reported, and a real run end to end."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from trl_soft import SOFTConfig, SOFTTrainer
from trl_soft.interpolation import check_starts_at_zero, interpolate_folder, is_lora_up
from trl_soft.state import SOFTState

from .conftest import make_tiny_llama, prompt_dataset, tiny_config

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _folder(path, tensors, adapter=False):
    path.mkdir()
    name = "adapter_model.safetensors" if adapter else "model.safetensors"
    save_file(tensors, str(path / name), metadata={"format": "pt"})
    if adapter:
        (path / "adapter_config.json").write_text("{}")
    return path / name


def test_full_weights_move_toward_the_start_in_proportion(tmp_path):
    start = {"w": torch.zeros(3), "b": torch.tensor([2.0, 4.0], dtype=torch.bfloat16), "steps": torch.tensor([7])}
    final = {"w": torch.tensor([1.0, -2.0, 4.0]), "b": torch.tensor([4.0, 0.0], dtype=torch.bfloat16),
             "steps": torch.tensor([9])}
    _folder(tmp_path / "start", start)
    saved = _folder(tmp_path / "final", final)
    assert interpolate_folder(tmp_path / "start", tmp_path / "final", 0.25) == 2
    out = load_file(saved)
    assert torch.equal(out["w"], torch.tensor([0.25, -0.5, 1.0]))
    assert out["b"].dtype == torch.bfloat16 and torch.equal(out["b"].float(), torch.tensor([2.5, 3.0]))
    assert torch.equal(out["steps"], torch.tensor([9]))  # not a weight: kept
    assert not list((tmp_path / "final").glob("*.partial"))


def test_a_fresh_adapter_scales_its_change_exactly(tmp_path):
    a0, a1, b1 = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 4)
    head0, head1 = torch.ones(2, 2), 3 * torch.ones(2, 2)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    _folder(tmp_path / "start", {f"{prefix}.lora_A.weight": a0, f"{prefix}.lora_B.weight": torch.zeros(8, 4),
                                 "base_model.model.lm_head.weight": head0}, adapter=True)
    saved = _folder(tmp_path / "final", {f"{prefix}.lora_A.weight": a1, f"{prefix}.lora_B.weight": b1,
                                         "base_model.model.lm_head.weight": head1}, adapter=True)
    interpolate_folder(tmp_path / "start", tmp_path / "final", 0.5)
    out = load_file(saved)
    assert torch.equal(out[f"{prefix}.lora_A.weight"], a1)  # A as trained ...
    assert torch.allclose(out[f"{prefix}.lora_B.weight"] @ out[f"{prefix}.lora_A.weight"], 0.5 * (b1 @ a1))
    assert torch.equal(out["base_model.model.lm_head.weight"], 2 * torch.ones(2, 2))  # modules_to_save: interpolated


@pytest.mark.parametrize(("start", "final", "match"), [
    ({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, "tensor v of .* is not in the starting model"),
    ({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, r"tensor w is \(2,\) at the start and \(3,\)"),
])
def test_folders_that_are_not_the_same_model_are_refused(tmp_path, start, final, match):
    _folder(tmp_path / "start", start)
    saved = _folder(tmp_path / "final", final)
    before = saved.read_bytes()
    with pytest.raises(ValueError, match=match):
        interpolate_folder(tmp_path / "start", tmp_path / "final", 0.5)
    assert saved.read_bytes() == before  # nothing half-written


def test_weights_that_are_not_safetensors_are_refused_naming_the_field(tmp_path):
    (tmp_path / "start").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"`final_interpolation`: .* holds no .safetensors weights \(pytorch_model.bin\)"):
        interpolate_folder(tmp_path / "start", tmp_path / "final", 0.5)


def test_only_an_adapter_that_starts_from_zero_is_accepted(tokenizer):
    assert is_lora_up("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight")
    assert not is_lora_up("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    model = get_peft_model(make_tiny_llama(tokenizer), LoraConfig(**LORA))
    check_starts_at_zero(model)
    check_starts_at_zero(make_tiny_llama(tokenizer))  # full fine-tuning: nothing to check
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if is_lora_up(n)).add_(1.0)
    with pytest.raises(ValueError, match=r"`final_interpolation` < 1 needs a LoRA adapter that starts from zero"):
        check_starts_at_zero(model)
    dora = get_peft_model(make_tiny_llama(tokenizer), LoraConfig(**LORA, use_dora=True))
    with pytest.raises(ValueError, match="cannot scale a DoRA adapter"):
        check_starts_at_zero(dora)


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_an_interpolation_outside_0_1_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=r"`final_interpolation` must be in \(0, 1\]"):
        SOFTConfig(output_dir=str(tmp_path), final_interpolation=value)


def test_a_run_returns_the_round_scaled_and_says_so(tmp_path, tokenizer):
    """One real LoRA round on a tiny Llama: `final_model/` holds round 1's lora_B times 0.5 (lora_A as trained), the
    manifest and the summary say so, and the model in memory is what the folder holds."""
    model_dir = tmp_path / "tiny"
    make_tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    trainer = SOFTTrainer(model=str(model_dir), train_dataset=prompt_dataset(4), peft_config=LoraConfig(**LORA),
                          args=tiny_config(out, num_rounds=1, collapse_metric="none", final_interpolation=0.5))
    trainer.train()
    round_1 = load_file(out / "round_1" / "model" / "adapter_model.safetensors")
    final = load_file(out / "final_model" / "adapter_model.safetensors")
    assert final.keys() == round_1.keys()
    ups = [k for k in final if is_lora_up(k)]
    assert ups and all(torch.equal(final[k], round_1[k] * 0.5) for k in ups)
    assert all(torch.equal(final[k], round_1[k]) for k in final if k not in ups)
    assert any(round_1[k].abs().max() > 0 for k in ups)  # the round did move: the scaling is seen
    in_memory = {n.replace(".default", ""): p for n, p in trainer.model.named_parameters() if is_lora_up(n)}
    assert all(torch.allclose(in_memory[k].detach().cpu(), final[k]) for k in ups)
    state = SOFTState.load(out)
    assert state.final_round == 1 and state.interpolated_by == 0.5
    assert json.loads((out / "soft_state.json").read_text())["interpolated_by"] == 0.5
    assert "round 1, its change from the start scaled by 0.5" in (out / "summary.md").read_text()


def test_the_verdict_names_the_interpolated_model_and_says_which_figures_are_of_the_round():
    from trl_soft.reporting.verdict import behaviour_verdict

    change = {"n": 342, "gained": 17, "lost": 5, "p_worse": 0.99, "p_better": 0.0085, "diff": 0.035, "low": 0.008,
              "high": 0.062, "mde": 0.035}
    row = {"round": 2, "accepted": True, "decision": "accepted", **{f"vs_start_{k}": v for k, v in change.items()}}
    held = {**change, "n": 797, "final_round": 2, "outcome": "better"}
    state = SOFTState(config_hash="x", num_rounds=2, rounds_completed=2, history=[row], final_round=2,
                      confirmation=held)
    plain = behaviour_verdict(state)
    assert "the final model (round 2) is MORE aligned" in plain and "scaled" not in plain
    state.interpolated_by = 0.5
    scaled = behaviour_verdict(state)
    assert scaled.startswith("Held-out verdict: the final model (round 2, its change from the start scaled by 0.5) "
                             "is MORE aligned than the starting model on 797")
    assert "the figures above are of round 2 as trained" in scaled and scaled.count("scaled by 0.5") == 2
    assert "(the ones that chose it): Round 2 as trained (accepted) is MORE aligned" in scaled
