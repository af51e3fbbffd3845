"""How often a retry sample gives the answer its prompt calls for, by how many same-kind exemplars the retry shows.

    python benchmarks/bench_retry_prompt.py --exemplars 2 3 --samples 16
    python benchmarks/bench_retry_prompt.py --kinds false-premise --exemplars 0 2 --samples 16

The prompts are the demo's own training prompts that call for a refusal (`category: harmful`, 20), an admission
(`unknowable`, 18) or a premise correction (`false-premise`, 18), as `--kinds` names them; no behaviour or benchmark
item is used, so a default chosen here leaves the held-out verdict untouched. Each prompt is asked `--samples` times the way an `aligned_retry_prompt:
same_kind` retry asks (`AlignedData.exemplars`: the pool's exemplars of the prompt's category, seeded per sample, as
chat turns before the request, no principles; `PromptFormatter.turns_prompt`; `--exemplars 0` is the bare request,
`aligned_retry_prompt: zero_shot`), on the embedded SmolLM2-135M-Instruct through vLLM with the demo's sampling
(temperature 0.7, top-p 0.9, 160 new tokens). A sample counts when the rule judge finds a refusal (harmful), an
admission (unknowable) or a correction of the premise (false-premise) in it, as the gates do. `--dump` writes every
sample (prompt, answer, whether it counts) as JSON lines, to read them. Per arm: the share of samples that
count, the prompts with at least one, and the chance that a prompt's first retry pass of 4 finds one (the mean over
prompts of 1 - (1 - p)^4, p its own rate): what `aligned_retry_exemplars` buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from trl_soft.aligned import AlignedData, AlignedSettings
from trl_soft.data import load_prompt_dataset
from trl_soft.engines import EngineChoice, EngineSettings, make_vllm_engine
from trl_soft.engines.settings import resolve_dtype
from trl_soft.filters import FilterSettings
from trl_soft.generation import GenerationSettings
from trl_soft.judges.rules import correction_evidence, refusal_evidence, unknown_evidence
from trl_soft.models import embedded_model_path
from trl_soft.prompting import PromptFormatter, load_exemplars, load_principles

# What counts, per category: (prompt, answer) -> the rule judge's evidence or None.
COUNTS = {"harmful": lambda prompt, answer: refusal_evidence(answer),
          "unknowable": lambda prompt, answer: unknown_evidence(answer),
          "false-premise": correction_evidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exemplars", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--kinds", nargs="+", choices=sorted(COUNTS), default=["harmful"],
                        help="the demo's prompt categories to ask (default: harmful)")
    parser.add_argument("--dump", type=Path, help="write every sample here as JSON lines")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    formatter = PromptFormatter(tokenizer, load_principles(None))
    demo = load_prompt_dataset("demo")
    pool = load_exemplars(None)
    dumped = []
    dtype = resolve_dtype("auto", on_cuda=False)
    choice = EngineChoice("vllm", "benchmark", "colocate", dtype, None, None, base=str(embedded_model_path()))
    sampling = GenerationSettings(max_new_tokens=160, temperature=0.7, top_p=0.9, batch_size=16, seed=7,
                                  stop_strings=formatter.stop_strings)
    lines = ["| category | exemplars shown | samples that count | prompts with one | first pass of 4 finds one | s |",
             "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as work:
        engine = make_vllm_engine(choice, EngineSettings(vllm_mode="colocate", dtype=dtype), tokenizer, Path(work), seed=0)
        try:
            for kind in args.kinds:
                prompts = [p for p, c in zip(demo["prompt"], demo["category"]) if c == kind]
                for count in args.exemplars:
                    aligned = AlignedData(AlignedSettings(retry_exemplars=count or None), FilterSettings(), pool, count, 0)
                    texts = [formatter.turns_prompt(p, aligned.exemplars(kind, 1, i, j) if count else ())
                             for i, p in enumerate(prompts) for j in range(args.samples)]
                    started = time.perf_counter()
                    results = engine.generate(texts, sampling, f"{kind}, {count} exemplars")
                    seconds = time.perf_counter() - started
                    answers = [formatter.extract_response(r.text) for r in results]
                    asked = [p for p in prompts for _ in range(args.samples)]
                    hits = [COUNTS[kind](p, a) is not None for p, a in zip(asked, answers)]
                    dumped += [{"category": kind, "exemplars": count, "prompt": p, "answer": a, "counts": h}
                               for p, a, h in zip(asked, answers, hits)]
                    rates = [statistics.fmean(hits[i * args.samples:(i + 1) * args.samples]) for i in range(len(prompts))]
                    first_pass = statistics.fmean(1 - (1 - p) ** 4 for p in rates)
                    lines.append(f"| {kind} | {count} | {sum(hits)}/{len(hits)} ({statistics.fmean(hits):.0%}) | "
                                 f"{sum(p > 0 for p in rates)}/{len(prompts)} | {first_pass:.0%} | {seconds:.0f} |")
                    print(lines[-1], flush=True)
        finally:
            engine.close()
    print("\n" + "\n".join(lines))
    if args.dump:
        args.dump.write_text("".join(json.dumps(row) + "\n" for row in dumped))


if __name__ == "__main__":
    main()
