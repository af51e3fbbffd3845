"""`trl-soft train` / `examples/soft_llama.py`: run SOFT from the command line or a YAML config.

In the style of `trl/scripts/sft.py`: a `TrlParser` over a script-arguments dataclass, `SOFTConfig` and TRL's
`ModelConfig` (so `--load_in_4bit`, `--use_peft`, `--lora_r`, ... work as in TRL), with `--config file.yaml`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from ..config import SOFTConfig
from ..config_file import check_config_env
from ..data import load_prompt_dataset
from ..models import EMBEDDED_NAME
from ..progress import console, quiet_third_party, say
from ..trainer import SOFTTrainer


@dataclass
class SOFTScriptArguments:
    """Where the prompts come from, and whether to continue an existing run."""

    prompts_dataset: str = field(
        default="demo",
        metadata={
            "help": "Prompt dataset: a hub dataset name, a local JSONL/JSON/CSV/Parquet/text file or folder, or "
            "'demo' for the prompts shipped with trl-soft."
        },
    )
    prompts_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    prompts_split: str = field(default="train", metadata={"help": "Dataset split holding the prompts."})
    max_prompts: int | None = field(
        default=None, metadata={"help": "Use only the first N prompts (quick runs); default all."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue the run in `output_dir` after its last completed round (same configuration)."},
    )


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((SOFTScriptArguments, SOFTConfig, ModelConfig), prog=prog)


def main(script_args: SOFTScriptArguments, training_args: SOFTConfig, model_args: ModelConfig) -> None:
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    if script_args.resume:  # known before the trainer is built: a `--resume` with nothing to resume stops there
        training_args.resume_from_checkpoint = True
    prompts = load_prompt_dataset(script_args.prompts_dataset, script_args.prompts_split, script_args.prompts_config)
    if script_args.max_prompts is not None:
        prompts = prompts.select(range(min(script_args.max_prompts, len(prompts))))

    trainer = SOFTTrainer(
        model=model_args.model_name_or_path or EMBEDDED_NAME,
        args=training_args,
        train_dataset=prompts,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=bool(training_args.resume_from_checkpoint))
    say(f"Final model saved to {trainer.soft_output_dir / 'final_model'}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.prompts_dataset)
    trainer.accelerator.end_training()  # what `Trainer.end()` does in transformers >= 5.18


def run(argv: Sequence[str] | None = None, prog: str | None = None, verbose: bool = False) -> None:
    """The command (`trl-soft train`, `examples/`): parse, then train with the run's lines on the console and the
    third-party noise filtered unless `verbose` or the run's `log_level` asks for everything (`trl_soft.progress`)."""
    parser = make_parser(prog)
    argv = check_config_env(sys.argv[1:] if argv is None else argv)  # a YAML `env:` block: no loader variables
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    with console(), quiet_third_party("info" if verbose else training_args.log_level):
        main(script_args, training_args, model_args)
