"""`trl-soft eval`: score a model or adapter on TruthfulQA MC1/MC2 and HHH, and print a table.

    trl-soft eval --model embedded --benchmarks truthfulqa_mc1,truthfulqa_mc2,hhh --data_dir ../shared/data
    trl-soft eval --model runs/demo/final_model --limit 50        # a LoRA adapter folder works too

Data comes from `--data_dir` (or `$TRL_SOFT_DATA_DIR`) when given, else from the hub.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from ..evaluation.benchmarks import BenchmarkSuite
from ..models import check_model_path, load_for_inference
from ..progress import console, quiet_third_party, say

DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class EvalArguments:
    model: str = field(
        default="embedded",
        metadata={"help": "Model to score: 'embedded', a hub id, a saved model folder, or a LoRA adapter folder."},
    )
    benchmarks: str = field(
        default="truthfulqa_mc1,truthfulqa_mc2,hhh",
        metadata={"help": "Comma-separated benchmark names: truthfulqa_mc1, truthfulqa_mc2, hhh."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Local data folder (holding truthfulqa/ and hhh_alignment/); default $TRL_SOFT_DATA_DIR or the hub."},
    )
    limit: int | None = field(
        default=None, metadata={"help": "Score only the first N TruthfulQA questions and N HHH items per category."}
    )
    max_batch: int = field(default=32, metadata={"help": "Most choices of one question scored in one forward pass."})
    hhh_answer_separator: str = field(
        default=" ", metadata={"help": "Text between 'Assistant:' and each HHH reply (BIG-bench's raw files: '')."}
    )
    truthfulqa_template: str | None = field(
        default=None,
        metadata={"help": "TruthfulQA prompt template (YAML with doc_to_text, or Jinja); default: lm-eval's own."},
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype (float32, bfloat16, float16, auto)."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the metrics here as JSON."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"`limit` must be >= 1 (or unset for every item); got {self.limit}.")
        if self.max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1; got {self.max_batch}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}; got {self.dtype!r}.")


def format_metrics_table(metrics: dict[str, float]) -> str:
    lines = ["| metric | score |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    return "\n".join(lines)


def main(args: EvalArguments) -> dict[str, float]:
    started = time.perf_counter()
    suite = BenchmarkSuite.load(
        args.benchmarks, args.data_dir, args.limit, args.truthfulqa_template, args.hhh_answer_separator
    )  # all data problems surface here, before the model is touched
    check_model_path(args.model)
    model, tokenizer = load_for_inference(args.model, dtype=args.dtype)  # an adapter folder: base + adapter
    metrics = suite.evaluate(model, tokenizer, max_batch=args.max_batch)
    seconds = time.perf_counter() - started
    say(f"{args.model}: {len(suite.truthfulqa_items)} TruthfulQA questions, {len(suite.hhh_items)} HHH items\n\n"
        f"{format_metrics_table(metrics)}\n\nwall time: {seconds:.1f} s")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({**metrics, "seconds": seconds}, indent=2) + "\n")
    return metrics


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """The command: its lines on the console, third-party noise filtered (`trl_soft.progress`)."""
    (args,) = TrlParser((EvalArguments,), prog=prog).parse_args_and_config(args=argv)
    with console(), quiet_third_party():
        main(args)
