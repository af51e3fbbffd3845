"""Generation engines on a demo-sized round, in one run on the same prompts: transformers against vLLM.

    python benchmarks/bench_generation.py [--prompts 32] [--num_exemplars 2] [--max_new_tokens 160] \
        [--json results.json] [--skip_round] [--skip_lora]

Arms (embedded SmolLM2-135M-Instruct, the same 32 demo prompts with k=2 exemplars drawn per prompt, sampled at the
demo's temperature 0.7 / top-p 0.9, 160 new tokens):
- `hf_plain`: transformers `generate`, batches of 16, no shared-prefix cache (float32);
- `hf_prefix`: the same with the principles header's KV cache shared (trl-soft's transformers engine, float32);
- `vllm_colocate`: a `vllm.LLM` started by this process (`vllm_dtype='auto'`: bfloat16 here);
- `vllm_server`: a vLLM server trl-soft starts, one HTTP request per prompt.
Every arm first answers 4 prompts untimed (thread pools, kernels); engine start-up is reported apart.

Then, unless skipped:
- greedy agreement of vLLM and transformers, both float32, on the first 16 tokens of every prompt's answer;
- LoRA on the CPU engine: the same adapter applied per request (`adapter`) against merged into the weights
  (`merged`, including the merge and reload);
- whole SOFT rounds: one demo round (`trl-soft demo` cut to one round) with `--generation_backend hf` and `vllm`,
  each in its own process, wall time and phases.

Prints Markdown tables; `--json` writes `{"arms": {"<arm>": {"seconds": s, "gen_tokens_per_s": x, ...}}, ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trl_soft.data import load_prompt_dataset
from trl_soft.engines import EngineChoice, EngineSettings, EngineWeights, HFEngine, make_vllm_engine
from trl_soft.engines.settings import resolve_dtype
from trl_soft.generation import GenerationSettings
from trl_soft.models import embedded_model_path, load_model_and_tokenizer
from trl_soft.prompting import ExemplarSampler, PromptFormatter, load_exemplars, load_principles

ROOT = Path(__file__).resolve().parents[1]
ROUND_PHASES = ("seconds_generate", "seconds_train", "seconds_validate", "seconds_diagnostics", "seconds_engine_sync")


def timed_arm(engine, texts, settings, warmup):
    engine.generate(texts[:4], warmup, "warm-up")
    started = time.perf_counter()
    results = engine.generate(texts, settings, "timed")
    seconds = time.perf_counter() - started
    tokens = sum(r.num_tokens for r in results)
    return {"seconds": round(seconds, 2), "gen_tokens": tokens, "gen_tokens_per_s": round(tokens / seconds, 1)}, results


def vllm_engine(mode, tokenizer, dtype, work, lora_mode=None, max_lora_rank=None):
    choice = EngineChoice("vllm", "benchmark", mode, dtype, lora_mode, max_lora_rank, base=str(embedded_model_path()))
    return make_vllm_engine(choice, EngineSettings(vllm_mode=mode, dtype=dtype), tokenizer, work, seed=0)


def random_adapter(model, folder: Path, rank: int = 16):
    """A LoRA adapter with small random weights on every projection (speed does not depend on what it learned)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.002)
    peft_model.save_pretrained(folder)
    return peft_model


def one_round(backend: str, args, output_dir: Path) -> tuple[float, dict]:
    command = [
        sys.executable, "-m", "trl_soft.cli", "demo", "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--num_rounds", "1", "--prompts_per_round", str(args.prompts), "--max_prompts", str(args.prompts),
        "--evaluate_start", "false", "--generation_backend", backend, "--disable_tqdm", "true",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the {backend} round failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return seconds, json.loads((output_dir / "round_1" / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--num_exemplars", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=16, help="transformers arms: prompts per generate() call")
    parser.add_argument("--agreement_tokens", type=int, default=16)
    parser.add_argument("--skip_lora", action="store_true")
    parser.add_argument("--skip_round", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer("embedded")
    formatter = PromptFormatter(tokenizer, load_principles())
    sampler = ExemplarSampler(load_exemplars(), args.num_exemplars, "random", seed=42)
    prompts = load_prompt_dataset("demo")["prompt"][: args.prompts]
    texts = [formatter.generation_prompt(p, sampler.sample(1, i)) for i, p in enumerate(prompts)]
    prompt_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)
    sampled = dict(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9, batch_size=args.batch_size,
                   stop_strings=formatter.stop_strings, seed=43)
    settings = {True: GenerationSettings(**sampled), False: GenerationSettings(**sampled, prefix_cache=False)}
    warmup = GenerationSettings(**{**sampled, "max_new_tokens": 8})
    dtype = resolve_dtype("auto", on_cuda=False)
    report: dict = {"setup": {"prompts": len(texts), "mean_prompt_tokens": round(prompt_tokens, 1),
                              "max_new_tokens": args.max_new_tokens, "vllm_dtype": dtype,
                              "torch_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count()}, "arms": {}}
    arms = report["arms"]
    work = Path(tempfile.mkdtemp(prefix="bench-generation-"))

    hf = HFEngine(lambda: model, tokenizer, None)
    for name, prefix in (("hf_plain", False), ("hf_prefix", True)):
        arms[name], _ = timed_arm(hf, texts, settings[prefix], warmup)
        print(name, arms[name], flush=True)
    for mode in ("colocate", "server"):
        started = time.perf_counter()
        engine = vllm_engine(mode, tokenizer, dtype, work / mode)
        start_seconds = time.perf_counter() - started
        try:
            arms[f"vllm_{mode}"], _ = timed_arm(engine, texts, settings[True], warmup)
        finally:
            engine.close()
        arms[f"vllm_{mode}"]["engine_start_seconds"] = round(start_seconds, 1)
        print(f"vllm_{mode}", arms[f"vllm_{mode}"], flush=True)

    # Greedy agreement, float32 on both sides.
    greedy = GenerationSettings(**{**sampled, "temperature": 0.0, "max_new_tokens": 2 * args.agreement_tokens})
    engine = vllm_engine("colocate", tokenizer, "float32", work / "agreement")
    try:
        from_vllm = engine.generate(texts, greedy, "vLLM greedy")
    finally:
        engine.close()
    from_hf = hf.generate(texts, greedy, "transformers greedy")
    n = args.agreement_tokens
    report["greedy_agreement"] = {
        "prompts": len(texts),
        f"first_{n}_tokens_equal": sum(a.token_ids[:n] == b.token_ids[:n] for a, b in zip(from_hf, from_vllm)),
        f"all_{2 * n}_tokens_equal": sum(a.token_ids == b.token_ids for a, b in zip(from_hf, from_vllm)),
        "mean_common_prefix_tokens": round(sum(
            next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), min(len(a.token_ids), len(b.token_ids)))
            for a, b in zip(from_hf, from_vllm)) / len(texts), 2),
    }
    print("greedy agreement", report["greedy_agreement"], flush=True)

    if not args.skip_lora:
        adapter_dir = work / "adapter"
        peft_model = random_adapter(model, adapter_dir)
        weights = EngineWeights.saved(adapter_dir, str(embedded_model_path()), "bench")
        for lora_mode in ("adapter", "merged"):
            engine = vllm_engine("colocate", tokenizer, dtype, work / f"lora_{lora_mode}", lora_mode, 16)
            try:
                sync = engine.load(weights, peft_model)
                arms[f"vllm_lora_{lora_mode}"], _ = timed_arm(engine, texts, settings[True], warmup)
            finally:
                engine.close()
            arms[f"vllm_lora_{lora_mode}"]["weights_load_seconds"] = round(sync, 2)
            print(f"vllm_lora_{lora_mode}", arms[f"vllm_lora_{lora_mode}"], flush=True)

    if not args.skip_round:
        report["rounds"] = {}
        for backend in ("hf", "vllm"):
            seconds, metrics = one_round(backend, args, work / f"round_{backend}")
            report["rounds"][backend] = {"seconds": round(seconds, 1), **{k: metrics.get(k) for k in ROUND_PHASES}}
            print("round", backend, report["rounds"][backend], flush=True)

    base = arms["hf_prefix"]["gen_tokens_per_s"]
    print(f"\n{len(texts)} prompts (mean {prompt_tokens:.0f} tokens: principles + {args.num_exemplars} exemplars + "
          f"request), {args.max_new_tokens} new tokens, sampled; vLLM in {dtype}; {os.cpu_count()} cores\n")
    print("| arm | seconds | generated tokens | tokens/s | vs hf_prefix | vs hf_plain | engine start s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, arm in arms.items():
        print(f"| {name} | {arm['seconds']:.1f} | {arm['gen_tokens']} | {arm['gen_tokens_per_s']:.1f} | "
              f"{arm['gen_tokens_per_s'] / base:.2f}x | {arm['gen_tokens_per_s'] / arms['hf_plain']['gen_tokens_per_s']:.2f}x "
              f"| {arm.get('engine_start_seconds', arm.get('weights_load_seconds', '')) } |")
    server, colocate = arms["vllm_server"]["gen_tokens_per_s"], arms["vllm_colocate"]["gen_tokens_per_s"]
    print(f"\nvllm_server / vllm_colocate: {server / colocate:.2f}")
    agreement = report["greedy_agreement"]
    print(f"\ngreedy, float32 both: first {n} tokens equal for {agreement[f'first_{n}_tokens_equal']}/{len(texts)} "
          f"prompts, all {2 * n} for {agreement[f'all_{2 * n}_tokens_equal']}; mean common prefix "
          f"{agreement['mean_common_prefix_tokens']} tokens")
    if "rounds" in report:
        print("\n| one demo round | wall s | generate s | train s | validate s | diagnostics s | engine sync s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for backend, row in report["rounds"].items():
            print(f"| {backend} | {row['seconds']:.1f} | " + " | ".join(f"{row[k] or 0:.1f}" for k in ROUND_PHASES) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
