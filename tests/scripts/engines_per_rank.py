"""Run under `accelerate launch --num_processes N`: the run's `EngineSession` with colocated vLLM (CPU build, float32)
on the tiny vLLM-shaped Llama saved in argv[3], with a LoRA model standing in for the trained one. Three requests of
the same prompts: greedy and sampled on the starting weights, then greedy on "round 1" (the LoRA adapter saved to
round_1/model, merged for the CPU engines).

After each request, the main process also has its own engine answer the whole request alone, as the one engine of a
1-process run does (`generate(prompts, settings)`, first index 0): the reference the gathered answers must equal.

Every rank writes, to argv[2] + f".rank{rank}.json", what it got (all the answers), the reference (main only), how
many prompts its own engine answered, and the CPU cores its engine was bound to. argv[1]: the run's output folder,
argv[4]: the tokenizer's folder."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl_soft.distributed import process_state, wait_for_everyone  # noqa: E402
from trl_soft.engines import EngineSettings, PerRankEngine  # noqa: E402
from trl_soft.engines.session import EngineSession  # noqa: E402
from trl_soft.generation import GenerationSettings  # noqa: E402
from trl_soft.state import round_paths  # noqa: E402

PROMPTS = [f"Question {i}: tell me {'more ' * (i % 4)}about topic number {i}.\nAnswer:" for i in range(7)]
LORA = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def main(out: str, result: str, model_dir: str, tokenizer_dir: str) -> None:
    state = process_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)  # the same LoRA weights on every rank, as DDP keeps them
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LORA)
    if state.is_main_process:
        model.save_pretrained(round_paths(Path(out), 1).model)
    wait_for_everyone()

    settings = EngineSettings(backend="vllm", dtype="float32", cpu_kv_cache_gb=1, max_model_len=256)
    choice = EngineSession.choose(settings, model_dir, LORA, False, use_cpu=True)
    session = EngineSession(choice, settings, Path(out), 0, lambda: model, tokenizer, accelerator)
    greedy = GenerationSettings(max_new_tokens=12, temperature=0.0, seed=43)
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=44)
    answers, alone = {}, {}
    try:
        for name, weights, sampling in (("start_greedy", 0, greedy), ("start_sampled", 0, sampled),
                                        ("round_1_greedy", 1, greedy)):
            session.use_round(weights)
            answers[name] = session.generate(PROMPTS, sampling, name)
            engine = session.engine
            per_rank = isinstance(engine, PerRankEngine)
            if per_rank and state.is_main_process:
                alone[name] = engine.engine.generate(PROMPTS, sampling, None)  # this engine, the whole request
            wait_for_everyone()
        record = {
            "processes": state.num_processes,
            "rank": state.process_index,
            "engine": type(engine).__name__,
            "served": engine.served if per_rank else None,
            "binding": engine.placement.environment().get("VLLM_CPU_OMP_THREADS_BIND") if per_rank else None,
            "answers": {k: [[r.text, list(r.token_ids)] for r in v] for k, v in answers.items()},
            "alone": {k: [[r.text, list(r.token_ids)] for r in v] for k, v in alone.items()},
            "merged_files": sorted(
                str(p.relative_to(out)) for p in (Path(out) / "engine_weights").rglob("*") if p.is_file()
            ),
        }
    finally:
        session.close()
    Path(f"{result}.rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:5])
