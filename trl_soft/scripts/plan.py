"""`trl-soft plan`: the memory plan of a run, printed without a GPU and without loading any weights.

    trl-soft plan --model_name_or_path meta-llama/Llama-2-7b-hf --load_in_4bit --use_peft --lora_r 16 \\
        --lora_target_modules all-linear --dtype bfloat16 --gpu_memory 24GiB
    trl-soft plan --config my_run.yaml --gpu_memory 80GiB --num_gpus 8 --sharding fsdp

It takes `trl-soft train`'s flags and `--config`, reads only the model's config.json (a local folder, or that one
file from the hub), and prints what each GPU holds for training and for generation, the engine the run would choose
on such a GPU and why (`trl_soft.engines.choice.fit_memory`, the same decision a run takes on CUDA). Without
`--gpu_memory` it uses this machine's GPU, or, with none, prints each engine's plan and the GPU memory it needs.
Prompts are not tokenized here: the generation length is `vllm_max_model_len`, or an estimate of the prompt
(`trl_soft.memory.PROMPT_TOKENS_ESTIMATE` tokens) plus `generation_max_new_tokens`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from ..config import SOFTConfig
from ..config_file import check_config_env
from ..engines.choice import EngineChoice, fit_memory, generation_shape, vllm_installed, vllm_quantization_methods
from ..engines.settings import smallest_lora_rank
from ..errors import EngineUnavailable
from ..memory import (
    GIB,
    PROMPT_TOKENS_ESTIMATE,
    SHARDINGS,
    MemoryPlan,
    ModelShape,
    TrainingShape,
    parse_size,
    read_model_config,
    sharding_of,
)
from ..models import EMBEDDED_NAME, resolve_model_path
from ..progress import logger, say
from ..quantization import wants_kbit
from .train import SOFTScriptArguments


@dataclass
class PlanArguments:
    """The machine the plan is for."""

    gpu_memory: str | None = field(
        default=None,
        metadata={"help": "Memory of one GPU, e.g. '24GiB', '80GB' (10^9 bytes) or '40960MiB'. Default: this "
                  "machine's GPU; without one, each engine's plan and the memory it needs."},
    )
    num_gpus: int = field(default=1, metadata={"help": "GPUs (= training processes) the run is launched on."})
    sharding: str | None = field(
        default=None,
        metadata={"help": f"How training is sharded over the GPUs: {', '.join(SHARDINGS)}. Default: read from the "
                  "launcher's environment and `--deepspeed`/`--fsdp`, else 'none' (DDP: a full copy per GPU)."},
    )


def vllm_choice(args: SOFTConfig, kbit: bool, lora_rank: int | None, path: str) -> EngineChoice:
    """The vLLM engine a run on a CUDA machine would configure (`choose_engine`'s decisions, without asking a GPU):
    the installed vLLM's quantization registry when vLLM is here, else vLLM 0.31's (no bitsandbytes)."""
    settings = args.settings.engine
    quantization = None if settings.quantization in ("auto", "none") else settings.quantization
    if settings.quantization == "auto" and kbit and vllm_installed() and "bitsandbytes" in vllm_quantization_methods():
        quantization = "bitsandbytes"
    lora_mode = max_rank = None
    if lora_rank is not None:
        lora_mode = "adapter" if settings.lora_mode == "auto" else settings.lora_mode
        max_rank = (settings.max_lora_rank or smallest_lora_rank(lora_rank)) if lora_mode == "adapter" else None
    new_tokens = args.settings.generation.max_new_tokens
    length = settings.max_model_len or math.ceil((PROMPT_TOKENS_ESTIMATE + new_tokens) / 256) * 256
    return EngineChoice(
        "vllm", "planned", mode=settings.vllm_mode, dtype=settings.dtype if settings.dtype != "auto" else "bfloat16",
        lora_mode=lora_mode, max_lora_rank=max_rank,
        quantization=quantization, base=path, on_cuda=True, max_model_len=length,
        sleep_mode=settings.sleep_mode and settings.vllm_mode == "colocate",
    )


def main(script_args, args: SOFTConfig, model_args: ModelConfig, plan_args: PlanArguments) -> int:
    del script_args  # the prompts are not read: the plan needs no tokenizer
    path = model_args.model_name_or_path or EMBEDDED_NAME  # a folder holding config.json alone is enough
    if path == EMBEDDED_NAME:
        path = resolve_model_path(path)
    config = read_model_config(path, model_args.model_revision)
    args.model_init_kwargs = {"dtype": model_args.dtype, **(args.model_init_kwargs or {})}
    peft_config, kbit_config = get_peft_config(model_args), get_quantization_config(model_args)
    candidate = vllm_choice(args, wants_kbit(kbit_config), getattr(peft_config, "r", None), path)
    training = TrainingShape.from_run(args, peft_config, kbit_config, plan_args.num_gpus,
                                      min(args.max_length or 1024, candidate.max_model_len))
    if plan_args.sharding is not None:
        if plan_args.sharding not in SHARDINGS:
            raise ValueError(f"--sharding must be one of {', '.join(SHARDINGS)}; got {plan_args.sharding!r}.")
        training = replace(training, sharding=plan_args.sharding)
    else:
        training = replace(training, sharding=sharding_of(args))
    model = ModelShape.from_config(config)
    settings = args.settings

    def plan_for(choice: EngineChoice) -> MemoryPlan:
        return MemoryPlan.build(model, training, generation_shape(choice, settings.engine, settings.generation.batch_size))

    total = parse_size(plan_args.gpu_memory) if plan_args.gpu_memory else None
    if total is None:
        total = torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None
    say(f"trl-soft plan: {path} ({model.parameters / 1e9:.2f} B parameters), {plan_args.num_gpus} GPU(s)"
          + (f" of {total / GIB:.1f} GiB" if total else "") + "; GiB = 2^30 bytes\n")
    hf = EngineChoice("hf", "`generation_backend='hf'`")
    if total is None:
        for choice in ([hf] if settings.engine.backend == "hf" else [candidate, hf]):
            plan = plan_for(choice)
            say(f"{plan.table()}\n  needs {plan.verdict(1 << 50).need / GIB:.2f} GiB per GPU\n")
        return 0
    if settings.engine.backend == "hf":
        chosen, plan = hf, plan_for(hf)
    else:
        try:
            chosen, plan = fit_memory(candidate, settings.engine, plan_for, total)
        except EngineUnavailable as err:
            logger.error(f"trl-soft plan: {err}")
            return 1
    say(plan.table(total))
    say(f"\nengine: {chosen.describe()}")
    return 0 if plan.verdict(total).fits else 1


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = TrlParser((SOFTScriptArguments, SOFTConfig, ModelConfig, PlanArguments), prog=prog)
    argv = check_config_env(sys.argv[1:] if argv is None else argv)
    script_args, args, model_args, plan_args = parser.parse_args_and_config(args=argv)
    try:
        return main(script_args, args, model_args, plan_args)
    except ValueError as err:  # a config the plan cannot read, a size it cannot parse
        logger.error(f"trl-soft plan: {err}")
        return 2
