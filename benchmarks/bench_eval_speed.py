"""TruthfulQA MC1+MC2 scoring speed and agreement: trl-soft vs lm-evaluation-harness vs a naive scorer, one run.

    python benchmarks/bench_eval_speed.py --data_dir ../shared/data --limit 20 [--skip_lm_eval] [--vllm]

All three score the same first N questions with the embedded SmolLM2-135M-Instruct in float32:
- trl-soft: `BenchmarkSuite` (shared primer encoded once, each question's context once, its choices in one batch);
- naive: one forward pass per (context + choice), lm-eval's tokenisation, no reuse;
- lm-eval: `lm_eval.simple_evaluate` on its own `truthfulqa_mc1`/`truthfulqa_mc2` tasks through a task YAML that only
  points `dataset_path` at the local JSONL;
- with `--vllm`: vLLM's prompt log-probabilities (`SamplingParams(prompt_logprobs=0)`, float32, prefix caching on),
  every (context + choice) one prompt, the same tokens as lm-eval (engine start-up not counted).
Prints a Markdown table (seconds, speed-up against lm-eval, MC1, MC2) and the largest per-question difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from trl_soft.evaluation import truthfulqa
from trl_soft.evaluation.benchmarks import BenchmarkSuite
from trl_soft.evaluation.multiple_choice import encode_pair
from trl_soft.models import embedded_model_path, load_model_and_tokenizer


def naive_scores(model, tokenizer, requests) -> list[list[float]]:
    scores = []
    with torch.no_grad():
        for request in requests:
            item = []
            for continuation in request.continuations:
                context_ids, continuation_ids = encode_pair(tokenizer, request.context, continuation)
                ids = torch.tensor([context_ids + continuation_ids])
                log_probs = torch.log_softmax(model(ids).logits[0, len(context_ids) - 1 : -1].float(), -1)
                item.append(log_probs.gather(1, torch.tensor(continuation_ids)[:, None]).sum().item())
            scores.append(item)
    return scores


def vllm_scores(tokenizer, requests) -> tuple[float, list[list[float]]]:
    """Summed log-probabilities of every choice from a vLLM engine's prompt log-probabilities (float32)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB (else vLLM's CPU build reserves 92% of the memory)
    encoded = [[encode_pair(tokenizer, r.context, c) for c in r.continuations] for r in requests]
    prompts = [TokensPrompt(prompt_token_ids=ctx + cont) for item in encoded for ctx, cont in item]
    llm = LLM(model=str(embedded_model_path()), dtype="float32", enforce_eager=True, enable_prefix_caching=True,
              enable_chunked_prefill=False)
    started = time.perf_counter()
    outputs = iter(llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False))
    scores = []
    for item in encoded:
        row = []
        for ctx, cont in item:
            logprobs = next(outputs).prompt_logprobs
            row.append(sum(logprobs[len(ctx) + i][token].logprob for i, token in enumerate(cont)))
        scores.append(row)
    return time.perf_counter() - started, scores


def lm_eval_per_question(data_file: Path, limit: int, batch_size: int) -> tuple[float, list[float], list[float]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks_dir = Path(list(importlib.util.find_spec("lm_eval").submodule_search_locations)[0]) / "tasks" / "truthfulqa"
    with tempfile.TemporaryDirectory() as folder:
        for name in ("truthfulqa_mc1", "truthfulqa_mc2"):
            (Path(folder) / f"{name}_local.yaml").write_text(
                f"include: {tasks_dir / (name + '.yaml')}\n"
                f"task: {name}_local\n"
                "tag: []\n"
                "dataset_path: json\n"
                "dataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {data_file}\n"
            )
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={embedded_model_path()},dtype=float32",
            tasks=["truthfulqa_mc1_local", "truthfulqa_mc2_local"],
            task_manager=TaskManager(include_path=folder),
            limit=limit,
            batch_size=batch_size,
            log_samples=True,
            device="cpu",
        )
        seconds = time.perf_counter() - started
    samples = results["samples"]
    order = lambda rows: [r["acc"] for r in sorted(rows, key=lambda r: r["doc_id"])]  # noqa: E731
    return seconds, order(samples["truthfulqa_mc1_local"]), order(samples["truthfulqa_mc2_local"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--lm_eval_batch_size", type=int, default=8)
    parser.add_argument("--skip_lm_eval", action="store_true")
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--vllm", action="store_true", help="also score with vLLM's prompt log-probabilities")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data_file = (Path(args.data_dir) / truthfulqa.LOCAL_FILE).resolve()
    model, tokenizer = load_model_and_tokenizer("embedded")
    model.eval()
    suite = BenchmarkSuite.load(["truthfulqa_mc1", "truthfulqa_mc2"], str(data_file), args.limit)
    items = suite.truthfulqa_items
    requests, layout = truthfulqa.build_requests(items)

    rows = {}
    started = time.perf_counter()
    from trl_soft.evaluation.multiple_choice import score_choices

    ours = truthfulqa.aggregate(items, score_choices(model, tokenizer, requests), layout)
    rows["trl-soft (shared context)"] = (time.perf_counter() - started, list(ours.per_item_mc1), list(ours.per_item_mc2))

    if not args.skip_naive:
        started = time.perf_counter()
        naive = truthfulqa.aggregate(items, naive_scores(model, tokenizer, requests), layout)
        rows["naive (forward per choice)"] = (
            time.perf_counter() - started, list(naive.per_item_mc1), list(naive.per_item_mc2))
    if args.vllm:
        seconds, scores = vllm_scores(tokenizer, requests)
        by_vllm = truthfulqa.aggregate(items, scores, layout)
        rows["vLLM prompt log-probs"] = (seconds, list(by_vllm.per_item_mc1), list(by_vllm.per_item_mc2))
    if not args.skip_lm_eval:
        rows["lm-evaluation-harness"] = lm_eval_per_question(data_file, args.limit, args.lm_eval_batch_size)

    reference = "lm-evaluation-harness" if "lm-evaluation-harness" in rows else next(iter(rows))
    ref_seconds, ref_mc1, ref_mc2 = rows[reference]
    print(f"\nTruthfulQA MC1+MC2, first {len(items)} questions, embedded SmolLM2-135M-Instruct, float32, "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"| scorer | seconds | speed-up vs {reference} | MC1 | MC2 | max abs MC2 diff | MC1 flips |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    table = {}
    for name, (seconds, mc1, mc2) in rows.items():
        diff = max(abs(a - b) for a, b in zip(mc2, ref_mc2))
        flips = sum(bool(a) != bool(b) for a, b in zip(mc1, ref_mc1))
        mean_mc1, mean_mc2 = sum(map(float, mc1)) / len(mc1), sum(mc2) / len(mc2)
        print(f"| {name} | {seconds:.1f} | {ref_seconds / seconds:.1f}x | {mean_mc1:.4f} | {mean_mc2:.4f} | "
              f"{diff:.2e} | {flips} |")
        table[name] = {"seconds": seconds, "mc1": mean_mc1, "mc2": mean_mc2, "max_mc2_diff": diff, "mc1_flips": flips}
    assert all(math.isfinite(v["mc2"]) for v in table.values())
    if args.json:
        Path(args.json).write_text(json.dumps({"limit": len(items), "rows": table}, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts its engine in new processes that import this file again
    main()
