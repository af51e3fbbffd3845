"""`trl_soft.memory`: the memory plan against real tiny models counted tensor by tensor, and the decisions it drives.

The weights (bf16, 4-bit NF4 through real bitsandbytes, with and without double quantization) and the trainable
parameters and optimizer state (LoRA through TRL's real `SFTTrainer`, which casts the adapters as a run does, after one
optimizer step) must be within 5% of the plan. Then the engine choice on a GPU: `auto` keeps vLLM only where the plan
fits, `vllm` that cannot fit is refused with the plan, and `trl-soft plan` prints it from a config.json alone.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from trl_soft.engines.choice import EngineChoice, fit_memory
from trl_soft.engines.settings import EngineSettings
from trl_soft.engines.vllm_local import engine_arguments
from trl_soft.errors import EngineUnavailable
from trl_soft.memory import GIB, GenerationShape, MemoryPlan, ModelShape, TrainingShape, parse_size

DOCS = runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "memory_plans.py"), run_name="plans")
TOLERANCE = 0.05


def tiny_config(vocab: int = 1000, tied: bool = False) -> LlamaConfig:
    """Wide enough that LoRA matrices pass bitsandbytes' 8-bit threshold (4096 values) at r=16."""
    return LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=tied)


def counted_bytes(model) -> int:
    """Every parameter's bytes, with bitsandbytes' quantization constants (absmax, code book, nested state)."""
    total = 0
    for parameter in model.parameters():
        total += parameter.numel() * parameter.element_size()
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            tensors = [state.absmax, state.code]
            if state.nested:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def close(planned: float, counted: float) -> bool:
    return abs(planned - counted) <= TOLERANCE * counted


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_weights_are_the_plans(tied):
    config = tiny_config(tied=tied)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    shape = ModelShape.from_config(config.to_dict())
    assert shape.parameters == sum(p.numel() for p in model.parameters())  # tied: the embedding counted once
    plan = MemoryPlan.build(shape, TrainingShape(dtype="bfloat16"), GenerationShape())
    assert close(plan.weight_bytes(), counted_bytes(model))


@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_weights_are_the_plans(tmp_path, double_quant):
    from transformers import AutoModelForCausalLM

    LlamaForCausalLM(tiny_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32))
    assert any(getattr(p, "quant_state", None) is not None for p in model.parameters())  # really quantized
    shape = ModelShape.from_config(json.loads((tmp_path / "config.json").read_text()))
    plan = MemoryPlan.build(shape, TrainingShape(dtype="bfloat16", quantization="nf4", double_quant=double_quant),
                            GenerationShape())
    counted = counted_bytes(model)
    assert close(plan.weight_bytes(), counted), (plan.weight_bytes(), counted)
    bf16 = MemoryPlan.build(shape, TrainingShape(dtype="bfloat16"), GenerationShape()).weight_bytes()
    assert counted < bf16  # the check is not vacuous: 4-bit is smaller than bf16 by the linear layers' share


def lora_step(tmp_path, tokenizer, four_bit: bool, targets, optim: str):
    """One optimizer step of TRL's SFTTrainer with LoRA on a tiny model; returns (trainer, plan's TrainingShape)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    folder = tmp_path / "base"
    LlamaForCausalLM(tiny_config(vocab=len(tokenizer))).to(torch.bfloat16).save_pretrained(folder)
    kbit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.float32) if four_bit else None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=kbit)
    peft = LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, report_to="none",
                     save_strategy="no", optim=optim, use_cpu=True, gradient_checkpointing=False, disable_tqdm=True,
                     logging_strategy="no")
    data = Dataset.from_list([{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(4)])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    trainer.train()
    shape = TrainingShape(dtype="bfloat16", quantization="nf4" if four_bit else None, lora_r=16,
                          lora_targets=targets if targets is None or isinstance(targets, str) else tuple(targets),
                          optimizer=optim)
    return trainer, shape


@pytest.mark.slow
@pytest.mark.parametrize("four_bit,targets,optim", [
    (False, "all-linear", "adamw_torch"),  # PEFT keeps the adapters in float32 on a bf16 base
    (True, None, "adamw_torch"),  # TRL casts them to bfloat16 on a 4-bit base; PEFT's default q_proj, v_proj
    (True, ["q_proj", "k_proj", "down_proj"], "paged_adamw_8bit"),  # bitsandbytes' 8-bit optimizer state
])
def test_lora_and_optimizer_state_are_the_plans(tmp_path, tokenizer, four_bit, targets, optim):
    trainer, training = lora_step(tmp_path, tokenizer, four_bit, targets, optim)
    plan = MemoryPlan.build(ModelShape.from_config(trainer.model.config.to_dict()), training, GenerationShape())
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(plan.trainable_tensors())
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    assert close(sum(plan.trainable_tensors()) * plan.trainable_bytes_per_param(), trainable_bytes)
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    counted = sum(t.numel() * t.element_size() for t in state)
    assert counted > 0 and close(plan.optimizer_bytes(), counted), (plan.optimizer_bytes(), counted)


def test_targets_sharding_and_checkpointing_change_the_plan_as_they_should(monkeypatch):
    from types import SimpleNamespace

    from trl_soft.memory import sharding_of

    shape = ModelShape.from_config(DOCS["CONFIGS"]["Llama-2-7B"])
    regex = MemoryPlan.build(shape, TrainingShape(lora_r=8, lora_targets=r".*\.(q_proj|v_proj)"), GenerationShape())
    assert regex.lora_targets() == ("q_proj", "v_proj") == MemoryPlan.build(
        shape, TrainingShape(lora_r=8), GenerationShape()).lora_targets()  # PEFT's default for Llama
    ddp = MemoryPlan.build(shape, replace(DOCS["QLORA"], processes=8), GenerationShape())
    zero3 = MemoryPlan.build(shape, replace(DOCS["QLORA"], processes=8, sharding="zero3"), GenerationShape())
    item = lambda plan, name: next(i.bytes for i in plan.train_items if i.name == name)  # noqa: E731
    assert item(zero3, "training weights") == -(-item(ddp, "training weights") // 8)
    assert item(zero3, "optimizer state") == -(-item(ddp, "optimizer state") // 8)
    no_checkpointing = MemoryPlan.build(shape, replace(DOCS["QLORA"], gradient_checkpointing=False), GenerationShape())
    assert no_checkpointing.activation_bytes() > 5 * ddp.activation_bytes()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert sharding_of(SimpleNamespace(deepspeed={"zero_optimization": {"stage": 3}}, fsdp=None)) == "zero3"
    assert sharding_of(SimpleNamespace(deepspeed=None, fsdp=None)) == "none"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2.yaml` sets
    assert sharding_of(SimpleNamespace(deepspeed=None, fsdp=None)) == "fsdp"


# ---- the decisions ---------------------------------------------------------------------------------------------
def test_auto_keeps_vllm_only_where_the_plan_fits():
    rows = DOCS["setup_rows"]()
    assert {r["setup"]: r["choice"].backend for r in rows} == {
        "7B QLoRA, 1 x 24 GB": "hf",  # vLLM 0.31 serves the 4-bit base in bf16: 12.6 GiB of weights + KV do not fit
        "7B QLoRA, 1 x 80 GB": "vllm",
        "13B LoRA (bf16 base), 1 x 80 GB": "vllm",
        "70B QLoRA, 1 x 80 GB": "hf",
        "70B QLoRA, 8 x 80 GB FSDP2, an engine per GPU": "hf",
        "70B QLoRA, 8 x 80 GB FSDP2, engines split over 8 GPUs": "vllm",
    }
    for row in rows:
        verdict = row["vllm_plan"].verdict(row["total"])
        assert (row["choice"].backend == "vllm") == verdict.fits
        if verdict.fits:  # vLLM's share holds the engine, and training's resident state fits beside it
            share, plan = row["choice"].gpu_memory_utilization, row["vllm_plan"]
            assert share * row["total"] >= plan.engine_bytes()
            assert plan.training_bytes(resident_only=True) + share * row["total"] <= row["total"]
        else:
            assert "fell back: the memory plan says vLLM does not fit: needs" in row["choice"].reason
            assert "GiB" in row["choice"].reason


def test_vllm_that_cannot_fit_is_refused_with_the_plan():
    row = DOCS["setup_rows"]()[0]  # 7B QLoRA on 24 GB
    settings = EngineSettings(backend="vllm")
    candidate = DOCS["vllm_candidate"](DOCS["QLORA"])
    with pytest.raises(EngineUnavailable, match="memory plan says vLLM does not fit") as caught:
        fit_memory(candidate, settings, lambda c: row["vllm_plan"], row["total"])
    assert "engine weights" in str(caught.value) and "generation_backend='auto'" in str(caught.value)
    # an explicit share too small for the engine is refused too, even on a GPU with room
    small = EngineSettings(backend="vllm", gpu_memory_utilization=0.1)
    plan = MemoryPlan.build(DOCS["shape"]("Llama-2-7B"), DOCS["QLORA"], GenerationShape(gpu_memory_utilization=0.1))
    assert not plan.verdict(80 * GIB).fits
    with pytest.raises(EngineUnavailable, match="holds less than the engine"):
        fit_memory(candidate, small, lambda c: plan, 80 * GIB)


def test_a_runs_plan_is_made_from_its_config_and_settings(tmp_path):
    """What the trainer plans on CUDA (`EngineSession.fit` through `run_planner`): the model's config.json, the
    SOFTConfig's batch sizes, lengths and dtype, the PEFT and bitsandbytes configs, the engine choice."""
    from peft import LoraConfig

    from trl_soft.engines.session import EngineSession, run_planner

    from .conftest import tiny_config as soft_config

    folder = tmp_path / "model"
    LlamaForCausalLM(tiny_config()).save_pretrained(folder)
    args = soft_config(tmp_path / "out", generation_batch_size=6, per_device_train_batch_size=3, max_length=256,
                       model_init_kwargs={"dtype": "bfloat16"})
    kbit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    plan_for = run_planner(args.settings, args, str(folder), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
                           kbit, max_model_len=200)
    choice = EngineChoice("vllm", "test", mode="colocate", dtype="bfloat16", lora_mode="adapter", max_lora_rank=8,
                          on_cuda=True, max_model_len=512, sleep_mode=True)
    plan = plan_for(choice)
    assert plan.training == TrainingShape(
        dtype="bfloat16", quantization="nf4", double_quant=True, lora_r=8, lora_targets=("q_proj", "v_proj"),
        optimizer=str(args.optim).split(".")[-1].lower(), batch_size=3, seq_len=200, gradient_checkpointing=False)
    assert (plan.generation.sequences, plan.generation.max_model_len, plan.generation.lora_rank) == (6, 512, 8)
    assert plan.generation.sleep and plan.model.parameters == sum(
        p.numel() for p in LlamaForCausalLM(tiny_config()).parameters())
    assert EngineSession.fit(choice, args.settings, args, str(folder), None, kbit) is choice  # no CUDA: unchanged


def test_nothing_changes_without_cuda_or_for_a_server_someone_else_runs():
    choice = EngineChoice("vllm", "asked for", mode="colocate", dtype="float32", on_cuda=False)
    never = lambda c: pytest.fail("planned without a GPU")  # noqa: E731
    assert fit_memory(choice, EngineSettings(backend="vllm"), never, None) == (choice, None)
    assert fit_memory(choice, EngineSettings(backend="vllm"), never, 24 * GIB) == (choice, None)  # CPU engine
    server = EngineSettings(backend="vllm", vllm_mode="server", server_base_url="http://10.0.0.2:8000")
    on_gpu = EngineChoice("vllm", "asked for", mode="server", on_cuda=True)
    assert fit_memory(on_gpu, server, never, 24 * GIB) == (on_gpu, None)


def test_the_engine_gets_the_planned_share():
    assert engine_arguments(EngineSettings(), True, True, 0.61)["gpu_memory_utilization"] == 0.61
    assert engine_arguments(EngineSettings(), True, True)["gpu_memory_utilization"] == 0.5  # no plan: the default


def test_sizes_parse():
    assert parse_size("24GiB") == 24 * GIB and parse_size("80GB") == 80 * 10**9 and parse_size("40960MiB") == 40 * GIB
    assert parse_size("24") == 24 * GIB
    with pytest.raises(ValueError, match="24GiB"):
        parse_size("lots")


# ---- trl-soft plan -----------------------------------------------------------------------------------------------
@pytest.fixture
def llama_7b_config(tmp_path) -> str:
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DOCS["CONFIGS"]["Llama-2-7B"]))
    return str(folder)  # config.json alone: no weights, no tokenizer


QLORA_FLAGS = ["--load_in_4bit", "--use_peft", "--lora_r", "16", "--lora_target_modules", "all-linear",
               "--dtype", "bfloat16"]


def test_plan_command_sizes_a_run_from_config_json(llama_7b_config, capsys):
    from trl_soft.cli import main

    assert main(["plan", "--model_name_or_path", llama_7b_config, *QLORA_FLAGS, "--gpu_memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    assert "6.74 B parameters" in out and "4-bit NF4" in out
    assert "engine: transformers" in out and "fell back: the memory plan says vLLM does not fit" in out
    assert main(["plan", "--model_name_or_path", llama_7b_config, *QLORA_FLAGS, "--gpu_memory", "80GiB"]) == 0
    out = capsys.readouterr().out
    assert "engine: vLLM" in out and "engine weights" in out and "gpu_memory_utilization 0.9" in out


def test_plan_command_refuses_vllm_that_cannot_fit_and_plans_without_a_gpu(llama_7b_config, capsys):
    from trl_soft.cli import main

    argv = ["plan", "--model_name_or_path", llama_7b_config, *QLORA_FLAGS]
    assert main([*argv, "--gpu_memory", "24GiB", "--generation_backend", "vllm"]) == 1
    assert "memory plan says vLLM does not fit" in capsys.readouterr().out  # the error through the logger (one voice)
    assert main(argv) == 0  # no GPU here and no --gpu_memory: both engines' plans and what each needs
    out = capsys.readouterr().out
    assert "generation (vLLM" in out and "generation (transformers)" in out and out.count("GiB per GPU") == 2
    assert main([*argv, "--gpu_memory", "80GiB", "--num_gpus", "8", "--sharding", "fsdp"]) == 0
    assert "sharded over 8 (fsdp)" in capsys.readouterr().out
