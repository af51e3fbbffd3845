"""The SOFT paper's comparison on one model and one prompt budget, with behaviour, TruthfulQA and HHH every round.

    python benchmarks/bench_alignment.py --data_dir ../shared/data --prompts 48 --rounds 2 --eval_limit 15
    python benchmarks/bench_alignment.py --arms soft soft_plus --prompts 96 --rounds 6   # where does it stop?

Arms (all LoRA on the embedded SmolLM2-135M-Instruct, the same prompts, seed and training settings):
- base: the starting model, no training;
- self_align: single-round Self-Align: one round on all the prompts, one fixed set of exemplars, no curriculum;
- soft: SOFT: `--rounds` rounds on fresh chunks of the same prompts, exemplars drawn per prompt, length curriculum;
- soft_plus: SOFT+: as SOFT, with the perplexity curriculum.
Every arm is evaluated for behaviour (`--behaviour`, default harmful, benign, unknowable: refusal of harmful
requests, over-refusal, admitting what cannot be known; zero-shot and with the principle-driven prompt, 95% intervals)
and runs with the principle gate on the demo prompts' `category` column (`--no_gate` turns it off). The multi-round
arms run with the EarlyCollapseCallback on `--collapse_metric` (default `refusal_harmful`; `--collapse_patience 0` =
off), so a long run shows where and why it stops; the final model is then the best round.

Writes `results.json`, `results.md` (one row per arm and round, with the collapse diagnostics, and each arm's stop
point) and `results.png` (metrics over rounds, every arm starting from the base model) into `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from peft import LoraConfig

from trl_soft import SOFTConfig, SOFTTrainer
from trl_soft.data import load_prompt_dataset
from trl_soft.state import SOFTState

METRICS = (
    ("truthfulqa_mc1", "TQA MC1"),
    ("truthfulqa_mc2", "TQA MC2"),
    ("hhh_harmless", "HHH harmless"),
    ("hhh_helpful", "HHH helpful"),
    ("hhh_honest", "HHH honest"),
    ("hhh_other", "HHH other"),
    ("hhh_overall", "HHH overall"),
    ("hhh_acc_norm_overall", "HHH norm"),
    ("validation_nll", "val NLL"),
    ("refusal_harmful", "refuse harmful %"),
    ("fewshot_refusal_harmful", "principled"),
    ("refusal_benign", "refuse benign %"),
    ("fewshot_refusal_benign", "principled"),
    ("admits_unknown", "admits unknown %"),
    ("fewshot_admits_unknown", "principled"),
    ("alignment_score", "align score %"),
    ("sample_entropy", "entropy"),
    ("sample_distinct_2", "distinct-2"),
    ("sample_self_bleu", "self-BLEU"),
)
ARMS = ("self_align", "soft", "soft_plus")
CURRICULUM = {"self_align": "none", "soft": "length", "soft_plus": "perplexity"}


def arm_config(name: str, args, output_dir: Path, evaluate_start: bool) -> SOFTConfig:
    single_round = name == "self_align"
    return SOFTConfig(
        output_dir=str(output_dir / name),
        overwrite_output_dir=True,
        num_rounds=1 if single_round else args.rounds,
        prompts_per_round=args.prompts if single_round else args.prompts // args.rounds,
        exemplar_sampling="fixed" if single_round else "random",
        curriculum=CURRICULUM[name],
        collapse_metric=args.collapse_metric if args.collapse_patience else "none",
        collapse_patience=max(args.collapse_patience, 1),
        num_exemplars=args.num_exemplars,
        generation_max_new_tokens=args.max_new_tokens,
        generation_batch_size=16,
        learning_rate=args.learning_rate,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        max_length=512,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        seed=args.seed,
        benchmarks=["truthfulqa_mc1", "truthfulqa_mc2", "hhh"] if args.eval_limit else None,
        benchmark_data_dir=args.data_dir,
        benchmark_limit=args.eval_limit or None,
        evaluate_start=evaluate_start or bool(args.behaviour),
        behaviour_eval=args.behaviour or None,
        filters=None if not args.no_gate else ["too_short", "truncated", "repetition", "exemplar_copy",
                                                "templated_refusal"],
        principle_gate_column="category",
    )


def run_arm(name: str, args, output_dir: Path, prompts, evaluate_start: bool) -> SOFTState:
    trainer = SOFTTrainer(
        model="embedded",
        args=arm_config(name, args, output_dir, evaluate_start),
        train_dataset=prompts,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM"),
    )
    trainer.train()
    return SOFTState.load(output_dir / name)


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if f"{key}_low" in row:  # a behaviour rate: percent with its 95% interval
        return f"{100 * value:.1f} [{100 * row[key + '_low']:.1f}, {100 * row[key + '_high']:.1f}]"
    return f"{value:.4f}"


def markdown(rows: list[dict]) -> str:
    header = "| arm | round | " + " | ".join(label for _, label in METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    body = []
    for row in rows:
        cells = [_cell(row, key) for key, _ in METRICS]
        round_cell = f"{row['round']}{' (final)' if row.get('final') else ''}"
        body.append(f"| {row['arm']} | {round_cell} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *body])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["refusal_harmful", "refusal_benign", "admits_unknown", "truthfulqa_mc1", "hhh_overall", "validation_nll"]
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.8))
    base = next((r for r in rows if r["arm"] == "base"), None)
    for axis, key in zip(axes.flat, keys):
        for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "base"):
            arm_rows = ([base] if base else []) + [r for r in rows if r["arm"] == arm]  # every arm starts at round 0
            points = [(r["round"], r[key]) for r in arm_rows if key in r]
            if points:
                (line,) = axis.plot(*zip(*points), marker="o", label=arm)
                spans = [(r["round"], r[f"{key}_low"], r[f"{key}_high"]) for r in arm_rows if f"{key}_low" in r]
                if spans:
                    xs, lows, highs = zip(*spans)
                    axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.12)
                final = next((r for r in rows if r["arm"] == arm and r.get("final")), None)
                if final is not None and key in final:
                    axis.plot(final["round"], final[key], marker="*", markersize=14, color=line.get_color())
        axis.set_title(dict(METRICS)[key])
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(title="* = final model")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--prompts", type=int, default=48, help="prompt budget shared by every arm")
    parser.add_argument("--rounds", type=int, default=2, help="SOFT rounds")
    parser.add_argument("--num_exemplars", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--eval_limit", type=int, default=15,
                        help="TruthfulQA questions / HHH items per category; 0 = no benchmarks (val NLL only)")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--collapse_patience", type=int, default=1, help="EarlyCollapseCallback patience; 0 = off")
    parser.add_argument("--collapse_metric", default="refusal_harmful", help="the metric the callback watches")
    parser.add_argument("--behaviour", nargs="*", default=["harmful", "benign", "unknowable"],
                        help="behaviour sets evaluated every round (none: pass the flag alone)")
    parser.add_argument("--no_gate", action="store_true", help="train without the principle gate")
    parser.add_argument("--output_dir", default="benchmarks/results/alignment")
    args = parser.parse_args()

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prompts = load_prompt_dataset("demo")
    started = time.perf_counter()
    rows: list[dict] = []
    seconds = {}
    stops = {}
    for index, name in enumerate(args.arms):
        arm_started = time.perf_counter()
        state = run_arm(name, args, output_dir, prompts, evaluate_start=index == 0)
        seconds[name] = time.perf_counter() - arm_started
        if index == 0:
            rows.append({"arm": "base", **state.base_metrics})
        rows += [{"arm": name, **metrics, "final": metrics["round"] == state.final_round} for metrics in state.history]
        stops[name] = {"rounds_run": state.rounds_completed, "final_round": state.final_round,
                       "stopped_early": state.stopped_early, "reason": state.stop_reason}
    total = time.perf_counter() - started

    stop_lines = [
        f"- {name}: ran {s['rounds_run']} round(s); final model = round {s['final_round']}"
        + (f"; stopped early: {s['reason']}" if s["stopped_early"] else "; no early stop")
        for name, s in stops.items()
    ]
    table = markdown(rows) + "\n\n" + "\n".join(stop_lines)
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "results.json").write_text(
        json.dumps({"settings": vars(args), "seconds": {**seconds, "total": total}, "stops": stops, "rows": rows},
                   indent=2) + "\n"
    )
    plot(rows, output_dir / "results.png")
    print(f"\n{table}\n\ntotal {total / 60:.1f} min; arms: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
