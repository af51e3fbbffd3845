"""How long the behaviour evaluation of one model takes, through vLLM and through transformers, in one run.

    python benchmarks/bench_behaviour.py --data_dir ../shared/data [--json results.json] [--skip_hf]
    python benchmarks/bench_behaviour.py --data_dir ../shared/data --per_round   # a round's evaluation, before/after

The model is the embedded SmolLM2-135M-Instruct. Arms:
- `vllm_full`: everything a round evaluates with `behaviour_eval: [harmful, benign, unknowable, helpful]`: 100
  harmful, 110 benign and 46 unknowable requests answered zero-shot and with the principle-driven prompt (k=2, as the
  demo), 80 Vicuna-bench questions answered zero-shot, the rule judge, and the 80 win-rate pairs judged in both orders
  by a local model judge (`pairwise_judge: hf` with the embedded model: the plumbing and its cost, not a useful judge);
  the reference answers are the model's own, generated untimed first. Target: at most 180 s.
- `vllm_zero_shot_harmful` and `hf_zero_shot_harmful`: the 100 harmful requests zero-shot only, on each engine: the
  same work, so the ratio is the engine's speed-up on this evaluation (`--skip_hf` leaves the slow arm out).
Engine start-up is reported apart from each arm's time.

`--per_round` compares what one round's behaviour evaluation costs, on one vLLM engine in one run:
- `before` (issue 10's round): 100 harmful (a fixed half-HarmBench, half-Do-Not-Answer sample), 110 benign and the
  first 46 unknowable requests, each answered zero-shot AND with the principle-driven prompt (k=2), 64 new tokens;
- `after` (issue 19's default round): every harmful request (HarmBench standard 200 + the three refusal areas of
  Do-Not-Answer, 667), 110 benign and 162 unknowable, zero-shot only, 48 new tokens (benchmarks/bench_verdict_length.py);
and prints items judged, seconds and the ratio (target: `after` at least twice the zero-shot items in at most the
time of `before`). `after_round_0` is the starting model's evaluation in a run: `after` plus the principle-driven
prompt on every item (the premise check), once per run.
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


def per_round(args) -> None:
    import tempfile

    from trl_soft.behaviour.data import load_own_set

    vllm, rules = EngineSettings(backend="vllm", cpu_kv_cache_gb=2), JudgeSettings()
    with tempfile.TemporaryDirectory() as scratch:
        first_46 = Path(scratch) / "unknowable_46.jsonl"
        first_46.write_text("".join(json.dumps({"id": i.id, "prompt": i.prompt, "kind": i.kind}) + "\n"
                                    for i in load_own_set("unknowable", None, "")[:46]))
        arms = {
            "before": BehaviourSettings(sets=("harmful", "benign", "unknowable"), harmful_limit=100, max_new_tokens=64,
                                        fewshot=(0,), unknowable_path=str(first_46), data_dir=args.data_dir),
            "after": BehaviourSettings(sets=("harmful", "benign", "unknowable"), fewshot=(), data_dir=args.data_dir),
            # round 0 of a run: the same, plus the principle-driven prompt on every item (the premise check)
            "after_round_0": BehaviourSettings(sets=("harmful", "benign", "unknowable"), data_dir=args.data_dir),
        }
        rows = {name: timed(name, settings=settings, judges=rules, engine_settings=vllm,
                            num_exemplars=args.num_exemplars) for name, settings in arms.items()}
    print("\n| arm | zero-shot items | answers generated | behaviour s | zero-shot items per s | time vs before |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows["before"]["outcome"].result.seconds
    for name, row in rows.items():
        result = row["outcome"].result
        zero_shot = sum(1 for sample in result.samples if sample["style"] == "zero_shot")
        print(f"| {name} | {zero_shot} | {len(result.samples)} | {result.seconds:.1f} | {zero_shot / result.seconds:.2f} "
              f"| {result.seconds / base:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {name: {"seconds": row["seconds"], "behaviour_seconds": row["outcome"].result.seconds,
                    "metrics": row["outcome"].metrics} for name, row in rows.items()}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--num_exemplars", type=int, default=2)
    parser.add_argument("--skip_hf", action="store_true")
    parser.add_argument("--per_round", action="store_true", help="only the before/after arms of one round")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.per_round:
        return per_round(args)

    vllm = EngineSettings(backend="vllm", cpu_kv_cache_gb=2)
    rules = JudgeSettings()
    pairwise = JudgeSettings(pairwise="hf", model="embedded")
    common = {"num_exemplars": args.num_exemplars}
    rows = {}

    # The starting model's answers to the helpful set: what a round's win rate compares with (round 0 makes them).
    reference = timed("reference answers (untimed in the table)", settings=BehaviourSettings(
        sets=("helpful",), data_dir=args.data_dir, fewshot=(), pairwise_judge=True), judges=pairwise,
        engine_settings=vllm, reference_answers=None, **common)
    answers = reference["outcome"].result.answers["zero_shot"]

    full = timed("vllm_full", settings=BehaviourSettings(
        sets=("harmful", "benign", "unknowable", "helpful"), data_dir=args.data_dir, pairwise_judge=True,
        harmful_limit=100, max_new_tokens=64),
        judges=pairwise, engine_settings=vllm, reference_answers=answers, **common)
    rows["vllm_full"] = full
    harmful = BehaviourSettings(sets=("harmful",), harmful_limit=100, data_dir=args.data_dir, fewshot=())
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
