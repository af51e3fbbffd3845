"""How long the behaviour evaluation of one model takes, through vLLM and through transformers, in one run.

    python benchmarks/bench_behaviour.py --data_dir ../shared/data [--json results.json] [--skip_hf]

The model is the embedded SmolLM2-135M-Instruct. Arms:
- `vllm_full`: everything a round evaluates with `behaviour_eval: [harmful, benign, unknowable, helpful]`: 100
  harmful, 110 benign and 46 unknowable requests answered zero-shot and with the principle-driven prompt (k=2, as the
  demo), 80 Vicuna-bench questions answered zero-shot, the rule judge, and the 80 win-rate pairs judged in both orders
  by a local model judge (`pairwise_judge: hf` with the embedded model: the plumbing and its cost, not a useful judge);
  the reference answers are the model's own, generated untimed first. Target: at most 180 s.
- `vllm_zero_shot_harmful` and `hf_zero_shot_harmful`: the 100 harmful requests zero-shot only, on each engine: the
  same work, so the ratio is the engine's speed-up on this evaluation (`--skip_hf` leaves the slow arm out).
Engine start-up is reported apart from each arm's time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trl_soft.behaviour.model import evaluate_model_behaviour
from trl_soft.behaviour.settings import BehaviourSettings
from trl_soft.engines import EngineSettings
from trl_soft.judges.settings import JudgeSettings


def timed(label: str, **kwargs) -> dict:
    started = time.perf_counter()
    outcome = evaluate_model_behaviour("embedded", **kwargs)
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s", flush=True)
    return {"seconds": seconds, "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--num_exemplars", type=int, default=2)
    parser.add_argument("--skip_hf", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()

    vllm = EngineSettings(backend="vllm", cpu_kv_cache_gb=2)
    rules = JudgeSettings()
    pairwise = JudgeSettings(pairwise="hf", model="embedded")
    common = {"num_exemplars": args.num_exemplars}
    rows = {}

    # The starting model's answers to the helpful set: what a round's win rate compares with (round 0 makes them).
    reference = timed("reference answers (untimed in the table)", settings=BehaviourSettings(
        sets=("helpful",), data_dir=args.data_dir, fewshot=False, pairwise_judge=True), judges=pairwise,
        engine_settings=vllm, reference_answers=None, **common)
    answers = reference["outcome"].result.answers["zero_shot"]

    full = timed("vllm_full", settings=BehaviourSettings(
        sets=("harmful", "benign", "unknowable", "helpful"), data_dir=args.data_dir, pairwise_judge=True),
        judges=pairwise, engine_settings=vllm, reference_answers=answers, **common)
    rows["vllm_full"] = full
    harmful = BehaviourSettings(sets=("harmful",), data_dir=args.data_dir, fewshot=False)
    rows["vllm_zero_shot_harmful"] = timed("vllm_zero_shot_harmful", settings=harmful, judges=rules,
                                           engine_settings=vllm, **common)
    if not args.skip_hf:
        rows["hf_zero_shot_harmful"] = timed("hf_zero_shot_harmful", settings=harmful, judges=rules,
                                             engine_settings=EngineSettings(backend="hf"), **common)

    print("\n| arm | seconds (incl. engine start) | behaviour s (answers + judging) | ratio vs hf | answers |")
    print("|---|---:|---:|---:|---:|")
    hf = rows.get("hf_zero_shot_harmful", {}).get("outcome")
    for name, row in rows.items():
        outcome = row["outcome"]
        behaviour = outcome.result.seconds
        ratio = f"{hf.result.seconds / behaviour:.2f}x" if hf is not None and "harmful" in name else ""
        print(f"| {name} | {row['seconds']:.1f} | {behaviour:.1f} | {ratio} | {len(outcome.result.samples)} |")
    metrics = full["outcome"].metrics
    print(f"\nvllm_full: helpful_win_rate against its own answers {metrics['helpful_win_rate']:.3f} "
          f"[{metrics['helpful_win_rate_low']:.3f}, {metrics['helpful_win_rate_high']:.3f}] (0.5 expected: the same "
          f"answers); target <= 180 s for the behaviour part: {'met' if full['outcome'].result.seconds <= 180 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {name: {"seconds": row["seconds"], "behaviour_seconds": row["outcome"].result.seconds,
                    "metrics": row["outcome"].metrics} for name, row in rows.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
