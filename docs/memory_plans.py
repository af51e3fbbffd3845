"""The memory plans in docs/scaling.md ("The memory plan"), printed as Markdown tables:

    python docs/memory_plans.py

Llama-2 7B/13B/70B and LLaMA 65B as their config.json files give them (written out here: nothing is downloaded),
planned with `trl_soft.memory` beside published figures, and the documented setups, with the engine a run would
choose on each GPU (`trl_soft.engines.choice.fit_memory`, the decision a run takes on CUDA before loading).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trl_soft.engines.choice import EngineChoice, fit_memory, generation_shape  # noqa: E402
from trl_soft.engines.settings import EngineSettings  # noqa: E402
from trl_soft.memory import GIB, GenerationShape, MemoryPlan, ModelShape, TrainingShape  # noqa: E402

LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, max_position_embeddings=4096,
             tie_word_embeddings=False, torch_dtype="float16", rms_norm_eps=1e-5)
CONFIGS = {  # the fields of meta-llama/Llama-2-*-hf/config.json (and huggyllama/llama-65b) the plan reads
    "Llama-2-7B": {**LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32},
    "Llama-2-13B": {**LLAMA, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40},
    "Llama-2-70B": {**LLAMA, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8},
    "LLaMA-65B": {**LLAMA, "hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80,
                  "num_attention_heads": 64, "num_key_value_heads": 64, "max_position_embeddings": 2048},
}
QLORA = TrainingShape(dtype="bfloat16", quantization="nf4", double_quant=True, lora_r=16, lora_targets="all-linear",
                      batch_size=8, seq_len=512)
LORA = replace(QLORA, quantization=None, double_quant=False)
# The run's defaults: generation_batch_size 8, a ~1,200-token prompt and 256 new tokens (docs/scaling.md).
GENERATION = dict(batch_size=8, max_model_len=1536)

# (name, model, training, GPU GiB, processes, engine settings)
SETUPS = [
    ("7B QLoRA, 1 x 24 GB", "Llama-2-7B", QLORA, 24, 1, EngineSettings()),
    ("7B QLoRA, 1 x 80 GB", "Llama-2-7B", QLORA, 80, 1, EngineSettings()),
    ("13B LoRA (bf16 base), 1 x 80 GB", "Llama-2-13B", LORA, 80, 1, EngineSettings()),
    ("70B QLoRA, 1 x 80 GB", "Llama-2-70B", QLORA, 80, 1, EngineSettings()),
    ("70B QLoRA, 8 x 80 GB FSDP2, an engine per GPU", "Llama-2-70B", replace(QLORA, sharding="fsdp", processes=8), 80,
     8, EngineSettings()),
    ("70B QLoRA, 8 x 80 GB FSDP2, engines split over 8 GPUs", "Llama-2-70B",
     replace(QLORA, sharding="fsdp", processes=8), 80, 8, EngineSettings(tensor_parallel_size=8)),
]


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(CONFIGS[name])


def vllm_candidate(training: TrainingShape) -> EngineChoice:
    """The vLLM engine a run configures on CUDA with vLLM 0.31 (no bitsandbytes: a 4-bit base is served in bf16)."""
    return EngineChoice("vllm", "auto", mode="colocate", dtype="bfloat16", lora_mode="adapter", max_lora_rank=16,
                        on_cuda=True, max_model_len=GENERATION["max_model_len"], sleep_mode=True)


def setup_rows() -> list[dict]:
    rows = []
    for name, model, training, gpu, _processes, settings in SETUPS:
        def plan_for(choice, model=model, training=training, settings=settings):
            return MemoryPlan.build(shape(model), training,
                                    generation_shape(choice, settings, GENERATION["batch_size"]))

        vllm_plan = plan_for(vllm_candidate(training))
        choice, plan = fit_memory(vllm_candidate(training), settings, plan_for, gpu * GIB)
        rows.append(dict(setup=name, plan=plan, vllm_plan=vllm_plan, choice=choice, total=gpu * GIB))
    return rows


def published_rows() -> list[tuple[str, str, str, float, float, str]]:
    """(figure, source, unit, published, planned, how the plan's figure was made)."""
    s7, s13, s70 = shape("Llama-2-7B"), shape("Llama-2-13B"), shape("Llama-2-70B")
    vllm_7b = MemoryPlan.build(s7, QLORA, GenerationShape(dtype="bfloat16")).engine_items[0].bytes
    nf4_7b = MemoryPlan.build(s7, QLORA, GenerationShape()).weight_bytes()
    rows = [
        ("Llama-2-7B parameters", "Hub model card (safetensors: 6.74B)", "B", 6.74, s7.parameters / 1e9, "config"),
        ("Llama-2-13B parameters", "Hub model card (13B)", "B", 13.0, s13.parameters / 1e9, "config"),
        ("Llama-2-70B parameters", "Hub model card (69B)", "B", 69.0, s70.parameters / 1e9, "config"),
        ("vLLM: Llama-2-7B weights, 16-bit", "vLLM's start-up log, vllm-project/vllm#14979", "GiB", 12.5523,
         vllm_7b / GIB, "engine weights"),
        ("KV cache per token, 13B shape, fp16", "vLLM paper (Kwon et al. 2023, sec. 3: 800 KB for OPT-13B, the same "
         "2 x 5120 x 40 x 2 bytes)", "KiB", 800, s13.kv_bytes_per_token(2) / 1024, "kv_bytes_per_token"),
        ("Llama-2-7B in NF4 + double quantization", "Manning, 'Quantization and Fast Inference' sec. 8.4, measured "
         "on an H100 ('3.60 GB' as printed; read as GiB here, as PyTorch's memory counters are usually divided; in "
         "10^9 bytes the plan is 3.87)", "GiB", 3.60, nf4_7b / GIB, "training weights"),
        ("NF4 block constants, bits/param", "QLoRA paper (Dettmers et al. 2023, sec. 3): 32/64 = 0.5", "bits",
         0.5, _constant_bits(s7, False), "4-bit weights minus 4 bits"),
        ("... with double quantization", "QLoRA paper: 8/64 + 32/(64 x 256) = 0.127", "bits", 0.127,
         _constant_bits(s7, True), "4-bit weights minus 4 bits"),
    ]
    for name, published in (("Llama-2-7B", 5), ("Llama-2-13B", 10), ("LLaMA-65B", 41)):
        guanaco = replace(QLORA, lora_r=64)
        plan = MemoryPlan.build(shape(name), guanaco, GenerationShape())
        size = plan.weight_bytes() + sum(plan.trainable_tensors()) * 2
        rows.append((f"Guanaco {name.split('-')[-1]} (4-bit + LoRA r=64)", "QLoRA paper, Table 6 (memory)", "GB",
                     published, size / 1e9, "weights + bf16 adapters"))
    return rows


def _constant_bits(model: ModelShape, double_quant: bool) -> float:
    from trl_soft.memory import quantized_4bit_bytes

    return (quantized_4bit_bytes(model, double_quant) * 8 - 4 * model.linear_params) / model.linear_params


def main() -> None:
    print("| figure | source | published | plan | difference |\n|---|---|---:|---:|---:|")
    for figure, source, unit, published, planned, _ in published_rows():
        print(f"| {figure} | {source} | {published:g} {unit} | {planned:.4g} {unit} | "
              f"{(planned - published) / published:+.1%} |")
    print("\n| setup | training peak / kept (GiB) | vLLM awake (GiB) | vLLM verdict | the run generates with |")
    print("|---|---:|---:|---|---|")
    for row in setup_rows():
        vllm, plan, choice = row["vllm_plan"], row["plan"], row["choice"]
        verdict = vllm.verdict(row["total"])
        engine = (f"vLLM, gpu_memory_utilization {choice.gpu_memory_utilization:.2f}" if choice.backend == "vllm"
                  else f"transformers (needs {plan.verdict(row['total']).need / GIB:.1f} GiB"
                  f"{'' if plan.verdict(row['total']).fits else ', does not fit either'})")
        print(f"| {row['setup']} | {vllm.training_bytes() / GIB:.1f} / {vllm.training_bytes(True) / GIB:.1f} | "
              f"{vllm.engine_bytes() / GIB:.1f} | {'fits' if verdict.fits else 'does not fit'}: needs "
              f"{verdict.need / GIB:.1f} of {row['total'] / GIB:.0f} GiB | {engine} |")


if __name__ == "__main__":
    main()
