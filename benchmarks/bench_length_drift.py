"""Do the rounds' answers get shorter, or did a round just draw prompts with shorter answers? Paired by prompt.

    python benchmarks/bench_length_drift.py benchmarks/results/levers_v5/seed_*/defaults --samples 3

A demo round draws its own 32 prompts, so the mean length of its answers moves with the prompts it drew: 16 ordinary
prompts a round (the other 16 call for a refusal, an admission or a correction) are too few to tell a 15% change from
the draw. This script removes the draw. For every round of every run folder given, it takes the round's fresh answers
to the ordinary prompts (`calls_for` empty in `generations.jsonl`: no refusal or admission to shorten them) and has
the **starting model** answer the same prompts `--samples` times, with the same principled prompt (the same
exemplars, by their ids) and the demo's sampling (temperature 0.7, 160 new tokens, the engine the demo uses). Per
prompt, the log of (the round's answer length / the starting model's mean length on that prompt); per round the mean
of those, as a ratio with its 95% interval (normal, over prompts, pooled over the folders given). Round 1's answers come
from the starting model itself, so its ratio is the noise floor; a later round's ratio is how much shorter or longer
its generating model writes on the very same prompts. Lengths are tokens of the answer as written (the raw output
cut at its stop string, before the length rule cuts anything): the model's length, not the filter's.

It also prints the unpaired figure the issue's target reads (round 3 kept-answer mean over round 1's, all prompts),
with a 95% bootstrap interval over prompts, to show how wide that figure is at this size.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from trl_soft.behaviour.stats import Z95, mean
from trl_soft.engines import EngineChoice, EngineSettings, make_vllm_engine
from trl_soft.engines.settings import resolve_dtype
from trl_soft.generation import GenerationSettings
from trl_soft.models import embedded_model_path
from trl_soft.prompting import PromptFormatter, load_exemplars, load_principles
from trl_soft.state import read_jsonl


def own_rows(folder: Path, round_index: int) -> list[dict]:
    """A round's own answers in `generations.jsonl` (not the ones carried from earlier rounds); none if absent."""
    path = folder / f"round_{round_index}" / "generations.jsonl"
    return [r for r in read_jsonl(path) if r.get("from_round") is None] if path.is_file() else []


def fresh_ordinary(folder: Path, round_index: int) -> list[dict]:
    """A round's own answers to prompts that call for nothing."""
    return [r for r in own_rows(folder, round_index) if not r.get("calls_for")]


def kept_tokens(folder: Path, round_index: int) -> list[int]:
    """Token counts of a round's own kept answers, every prompt (the issue's length target reads their mean)."""
    return [r["num_tokens"] for r in own_rows(folder, round_index) if r.get("kept")]


def bootstrap_ratio(first: list[int], last: list[int], draws: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """mean(last) / mean(first) and its 95% percentile interval, resampling each list's answers."""
    rng = random.Random(seed)
    ratios = sorted(statistics.fmean(rng.choices(last, k=len(last))) / statistics.fmean(rng.choices(first, k=len(first)))
                    for _ in range(draws))
    return statistics.fmean(last) / statistics.fmean(first), ratios[int(0.025 * draws)], ratios[int(0.975 * draws)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="demo run folders (each with round_*/generations.jsonl)")
    parser.add_argument("--samples", type=int, default=3, help="starting-model answers per prompt")
    parser.add_argument("--output", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args()

    folders = [f for f in args.folders if (f / "soft_state.json").is_file()]
    if not folders:
        parser.error("no run folder with a soft_state.json among the folders given")
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    formatter = PromptFormatter(tokenizer, load_principles(None))
    pool = {e.id: e for e in load_exemplars(None)}

    def tokens(text: str) -> int:
        return len(tokenizer(formatter.extract_response(text), add_special_tokens=False).input_ids)

    rounds = sorted({int(p.name.split("_")[1]) for f in folders for p in f.glob("round_*") if p.name != "round_0"})
    jobs = [(f, t, row) for f in folders for t in rounds for row in fresh_ordinary(f, t)]
    texts = [formatter.generation_prompt(row["prompt"], [pool[i] for i in row["exemplar_ids"] if i in pool])
             for _, _, row in jobs for _ in range(args.samples)]
    dtype = resolve_dtype("auto", on_cuda=False)
    choice = EngineChoice("vllm", "benchmark", "colocate", dtype, None, None, base=str(embedded_model_path()))
    sampling = GenerationSettings(max_new_tokens=160, temperature=0.7, batch_size=16, seed=1234,
                                  stop_strings=formatter.stop_strings)
    with tempfile.TemporaryDirectory() as work:
        engine = make_vllm_engine(choice, EngineSettings(vllm_mode="colocate", dtype=dtype), tokenizer, Path(work), seed=0)
        try:
            results = engine.generate(texts, sampling, "starting model on the rounds' prompts")
        finally:
            engine.close()
    start_means = [statistics.fmean(tokens(r.text) for r in results[k * args.samples:(k + 1) * args.samples])
                   for k in range(len(jobs))]

    lines = ["| round | ordinary prompts | round's answer tokens | starting model's, same prompts | ratio [95% CI] |",
             "|---:|---:|---:|---:|---|"]
    logs: dict[int, list[float]] = {}
    for t in rounds:
        picked = [(k, row) for k, (_, r, row) in enumerate(jobs) if r == t]
        own = [max(1, tokens(row["raw_output"])) for _, row in picked]
        start = [max(1.0, start_means[k]) for k, _ in picked]
        logs[t] = [math.log(a / b) for a, b in zip(own, start)]
        ratio = mean(logs[t], clip=None)
        lines.append(f"| {t} | {len(picked)} | {statistics.fmean(own):.0f} | {statistics.fmean(start):.0f} | "
                     f"{math.exp(ratio.value):.2f} [{math.exp(ratio.low):.2f}, {math.exp(ratio.high):.2f}] |")
    if len(rounds) >= 2:
        first, last = rounds[0], rounds[-1]
        diff = statistics.fmean(logs[last]) - statistics.fmean(logs[first])
        se = math.sqrt(statistics.variance(logs[last]) / len(logs[last]) + statistics.variance(logs[first]) / len(logs[first]))
        lines.append(f"\nRound {last} against round {first}, paired with the starting model per prompt: "
                     f"{math.exp(diff):.2f} [{math.exp(diff - Z95 * se):.2f}, {math.exp(diff + Z95 * se):.2f}].")
        lines.append(f"\nThe issue's unpaired figure, round {last} kept-answer mean over round {first}'s (all prompts), "
                     "per folder, 95% bootstrap interval:")
        for f in folders:
            ratio, low, high = bootstrap_ratio(kept_tokens(f, first), kept_tokens(f, last))
            lines.append(f"- {f}: {ratio:.2f} [{low:.2f}, {high:.2f}]")
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
