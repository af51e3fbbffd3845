"""`trl-soft eval --behaviour ...` and `trl-soft check`: the behaviour evaluation of one model, outside a run.

    trl-soft eval --behaviour harmful,benign,unknowable --model runs/demo/final_model --benchmark_data_dir ../shared/data
    trl-soft check --model embedded            # the SOFT premise check: principled prompt vs zero-shot

Every `behaviour_*`, `judge_*`, `generation_backend`/`vllm_*` and prompt field of `SOFTConfig` applies (the same
names as in a run, so `check` measures the prompt the rounds would use). `check` exits with 1 when the premise does
not hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from ..behaviour.evaluate import format_premise
from ..behaviour.model import evaluate_model_behaviour
from ..behaviour.settings import DEFAULT_SETS, BehaviourSettings, parse_sets
from ..config import SOFTConfig
from ..progress import console, quiet_third_party, say
from ..prompting import load_exemplars, load_principles
from ..state import atomic_write_jsonl


@dataclass
class BehaviourArguments:
    model: str = field(
        default="embedded",
        metadata={"help": "Model to evaluate: 'embedded', a hub id, a saved model folder, or a LoRA adapter folder."},
    )
    behaviour: str = field(
        default=",".join(DEFAULT_SETS),
        metadata={"help": "Comma-separated behaviour sets: harmful, benign, unknowable, helpful (needs a pairwise "
                          "judge and --reference_answers)."},
    )
    reference_answers: str | None = field(
        default=None,
        metadata={"help": "JSON {item id: answer} of the model to compare with for 'helpful' (a run writes it to "
                          "round_0/behaviour_reference.json)."},
    )
    part: str = field(
        default="all",
        metadata={"help": "Which behaviour items: 'all', or a run's 'selection' or 'confirmation' part "
                          "(`behaviour_confirmation_share`; choose settings on the selection part only)."},
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the metrics (and premise) here."})
    samples_out: str | None = field(default=None, metadata={"help": "Write every answer and verdict here (JSONL)."})


def _table(metrics: dict) -> str:
    lines = ["| metric | value | 95% CI | n |", "|---|---:|---:|---:|"]
    for name, value in metrics.items():
        if f"{name}_low" in metrics:
            lines.append(f"| {name} | {100 * value:.1f}% | [{100 * metrics[name + '_low']:.1f}, "
                         f"{100 * metrics[name + '_high']:.1f}] | {metrics[name + '_n']} |")
    return "\n".join(lines)


def main(args: BehaviourArguments, config, check: bool = False) -> int:
    config.behaviour_eval = parse_sets(args.behaviour)
    if check:
        config.behaviour_fewshot = [0]
    settings = BehaviourSettings.from_config(config)  # after the changes above
    reference = json.loads(Path(args.reference_answers).read_text()) if args.reference_answers else None
    started = time.perf_counter()
    outcome = evaluate_model_behaviour(
        args.model, settings, config.settings.judges, config.settings.engine,
        load_principles(config.principles_path), load_exemplars(config.exemplars_path), config.num_exemplars,
        config.seed, config.generation_batch_size, reference, exemplar_sampling=config.exemplar_sampling,
        part=args.part,
    )
    seconds = time.perf_counter() - started
    premise = f"\n\n{format_premise(outcome.premise)}" if outcome.premise is not None else ""
    say(f"{args.model} ({outcome.engine})\n\n{_table(outcome.metrics)}{premise}\n\nwall time: {seconds:.1f} s")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(
            {"metrics": outcome.metrics, "premise": outcome.premise, "seconds": seconds,
             "item_scores": outcome.result.item_scores}, indent=2) + "\n")
    if args.samples_out:
        atomic_write_jsonl(args.samples_out, outcome.result.samples)
    return 0 if not check or (outcome.premise or {}).get("verdict") == "holds" else 1


def run(argv: Sequence[str] | None = None, prog: str | None = None, check: bool = False) -> int:
    argv = list(argv or [])
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
        argv += ["--output_dir", "trl-soft-eval"]  # required by TrainingArguments; nothing is written there
    args, config = TrlParser((BehaviourArguments, SOFTConfig), prog=prog).parse_args_and_config(args=argv)
    with console(), quiet_third_party(config.log_level):  # the command's lines; third-party noise filtered
        return main(args, config, check=check)
