"""Step-On-Feet Tuning of a Llama-family model, in the style of `trl/scripts/sft.py`.

Single GPU, 4-bit QLoRA, Llama-2-7B (what the SOFT paper bootstraps):

```bash
accelerate launch examples/soft_llama.py \
    --model_name_or_path meta-llama/Llama-2-7b-hf --load_in_4bit --use_peft --lora_r 16 --lora_alpha 32 \
    --prompts_dataset my-org/my-prompts --num_rounds 3 --prompts_per_round 2000 \
    --curriculum length --output_dir soft-llama2-7b
```

CPU, the embedded SmolLM2-135M-Instruct and the shipped demo prompts (what `make demo` runs):

```bash
python examples/soft_llama.py --config trl_soft/assets/demo.yaml
```

Continue an interrupted run with `--resume`; `--config file.yaml` takes any of the flags below
(`python examples/soft_llama.py --help` lists them all).
"""

import sys

from trl_soft import SOFTInterrupted
from trl_soft.config_file import check_config_env
from trl_soft.progress import console, quiet_third_party
from trl_soft.scripts.train import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    # A shared YAML's `env:` block may not set LD_PRELOAD, PYTHONPATH, ... unless `--allow_loader_env` is given.
    script_args, training_args, model_args = parser.parse_args_and_config(args=check_config_env(sys.argv[1:]))
    try:
        # This script owns its process: trl-soft's lines on stdout, the harmless third-party noise filtered (unless
        # `--log_level info`). A program that imports trl_soft decides that itself.
        with console(), quiet_third_party(training_args.log_level):
            main(script_args, training_args, model_args)
    except SOFTInterrupted as stop:  # SIGTERM / Ctrl-C: stopped at a safe point; `--resume` continues
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
