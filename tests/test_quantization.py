"""QLoRA on CPU with the real bitsandbytes: one short round on a tiny 4-bit model, and the up-front refusals."""

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import BitsAndBytesConfig

from trl_soft import SOFTTrainer
from trl_soft.quantization import check_kbit_supported, wants_kbit
from trl_soft.state import SOFTState, read_jsonl

from .conftest import make_tiny_llama, prompt_dataset, tiny_config

NF4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def test_wants_kbit_reads_objects_and_dicts():
    assert wants_kbit(BitsAndBytesConfig(**NF4)) and wants_kbit({"load_in_8bit": True})
    assert not wants_kbit(None) and not wants_kbit({"load_in_4bit": False})


def test_4bit_without_peft_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="--use_peft"):
        check_kbit_supported(BitsAndBytesConfig(**NF4), None, "some/model")
    with pytest.raises(ValueError, match="--use_peft"):
        SOFTTrainer(model="trl-soft-tests/never-loaded", args=tiny_config(tmp_path / "out"),
                    train_dataset=prompt_dataset(12), quantization_config=BitsAndBytesConfig(**NF4))


@pytest.mark.slow
def test_one_qlora_round_on_a_4bit_model(tmp_path, tokenizer):
    import bitsandbytes as bnb

    folder = tmp_path / "tiny"
    make_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    trainer = SOFTTrainer(
        model=str(folder),
        args=tiny_config(out, num_rounds=1, generation_temperature=1.0, learning_rate=1e-2),
        train_dataset=prompt_dataset(8),
        quantization_config=BitsAndBytesConfig(**NF4),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()

    # Generation ran through the 4-bit base + adapter (nothing merged into the quantized weights).
    rows = read_jsonl(out / "round_1" / "generations.jsonl")
    assert len(rows) == 8 and any(r["num_tokens"] > 0 for r in rows)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    lora_after = {n: p.detach() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)
    # Only the adapter is saved, per round and as the final model.
    for folder_name in ("round_1/model", "final_model"):
        saved = out / folder_name
        assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    assert all("lora" in key for key in load_file(str(out / "final_model" / "adapter_model.safetensors")))
    assert SOFTState.load(out).rounds_completed == 1
