"""What each difficulty scorer costs next to the round's generation it orders (target: perplexity <= 25%).

    python benchmarks/bench_curriculum.py [--prompts 32] [--num_exemplars 2] [--max_new_tokens 160] [--repeats 3]

One round of the demo settings on the embedded SmolLM2-135M-Instruct: the model answers `--prompts` demo prompts
few-shot (sampled, like a real round), then every scorer orders the answers. Scorers are timed `--repeats` times
(median) after a warm-up; the ratio column divides by the generation time of the same run. Prints a Markdown table
and, with `--json`, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from trl_soft.curriculum import SCORERS, ScoringContext
from trl_soft.data import load_prompt_dataset
from trl_soft.generation import GenerationSettings, generate_completions
from trl_soft.models import load_model_and_tokenizer
from trl_soft.prompting import ExemplarSampler, PromptFormatter, load_exemplars, load_principles

TARGET = {"perplexity": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--num_exemplars", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--generation_batch_size", type=int, default=16)
    parser.add_argument("--scoring_batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer("embedded")
    formatter = PromptFormatter(tokenizer, load_principles())
    sampler = ExemplarSampler(load_exemplars(), args.num_exemplars, "random", seed=0)
    prompts = load_prompt_dataset("demo")["prompt"][: args.prompts]
    texts = [formatter.generation_prompt(p, sampler.sample(1, i)) for i, p in enumerate(prompts)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9,
                                  batch_size=args.generation_batch_size, stop_strings=formatter.stop_strings, seed=1)

    started = time.perf_counter()
    results = generate_completions(model, tokenizer, texts, settings, desc="generate")
    generation_seconds = time.perf_counter() - started
    responses = [formatter.extract_response(r.text) or "(empty)" for r in results]
    new_tokens = sum(r.num_tokens for r in results)

    context = ScoringContext(tokenizer=tokenizer, model=model, formatter=formatter, batch_size=args.scoring_batch_size)
    SCORERS["perplexity"](prompts[:4], responses[:4], context)  # warm-up
    rows = []
    for name in ("length", "heuristic", "perplexity"):
        times = []
        for _ in range(args.repeats):
            context.cache.clear()
            started = time.perf_counter()
            SCORERS[name](prompts, responses, context)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        rows.append({"scorer": name, "seconds": seconds, "ratio": seconds / generation_seconds})

    print(f"\nOne round: {len(prompts)} prompts, k={args.num_exemplars}, {new_tokens} new tokens generated in "
          f"{generation_seconds:.1f} s (batch {args.generation_batch_size}).\n")
    print("| step | seconds | / generation | target |")
    print("|---|---:|---:|---:|")
    print(f"| generation | {generation_seconds:.2f} | 1.000 | |")
    for row in rows:
        target = f"<= {TARGET[row['scorer']]:.2f}" if row["scorer"] in TARGET else ""
        print(f"| {row['scorer']} scorer | {row['seconds']:.3f} | {row['ratio']:.3f} | {target} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "generation_seconds": generation_seconds, "new_tokens": new_tokens,
                       "scorers": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
