"""`vllm_mode='colocate'`: a `vllm.LLM` engine owned by the training process.

vLLM V1 runs the engine in child processes (started with `spawn` on CPUs and once CUDA is initialised): the training
process keeps its own threads and memory, and the script that builds the engine must guard its entry point with
`if __name__ == "__main__":` (checked here before anything starts). Memory: on a GPU the engine takes
`vllm_gpu_memory_utilization` of it; on a CPU its KV cache takes `vllm_cpu_kv_cache_gb`.

Weights, once per round, from the folder the round was saved to:
- full fine-tuning: the engine reloads its weights in place from `round_t/model` (`reload_weights`), and its prefix
  cache, computed with the old weights, is dropped;
- LoRA, `adapter` mode: every request carries the round's adapter (`LoRARequest`); the base weights never change;
- LoRA, `merged` mode: the adapter is merged into the base from the training model (`weights.py`) into
  `output_dir/engine_weights/`, and reloaded like full weights.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..generation import GenerationResult, GenerationSettings
from .base import EngineError, EngineWeights, StopRule, encode_prompts, prompt_seed, result_from_vllm, sampling_fields
from .choice import EngineChoice
from .settings import EngineSettings
from .weights import check_adapter_engine_weights, reload_folder


def check_main_guard() -> None:
    """vLLM's engine processes are spawned: they import the launching script again. Without the guard, that script
    would start a second run inside the engine. Refuse before anything is started."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path) or getattr(main, "__spec__", None) is not None:
        return  # interactive, `python -c`, `python -m pkg` (packages guard themselves): nothing is re-run
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    if "__main__" not in text:
        raise EngineError(
            f"vLLM starts its engine in new processes that import {path} again, which would start this run a second "
            "time. Put the script's work under `if __name__ == \"__main__\":`, or set `vllm_mode='server'` or "
            "`generation_backend='hf'`."
        )


# vLLM's CPU build keeps one core for its scheduler by default; on a small machine that costs much of the speed
# (measured on 2 cores, 32 demo prompts: 188 instead of 114 tokens/s); the scheduler needs little. Up to this many
# cores, none is kept.
SMALL_CPU_CORES = 8


def engine_environment(settings: EngineSettings, on_cuda: bool) -> dict[str, str]:
    """Environment the engine's processes must start with (read by vLLM at start-up); the user's own values win."""
    env = {}
    if not on_cuda:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_cache_gb)
        if (os.cpu_count() or 1) <= SMALL_CPU_CORES:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return {k: v for k, v in env.items() if k not in os.environ}


def engine_arguments(settings: EngineSettings, on_cuda: bool) -> dict[str, object]:
    """`vllm.LLM` / `vllm serve` settings that follow from the hardware (the same for both modes)."""
    arguments: dict[str, object] = {
        "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not on_cuda,
        "enable_prefix_caching": True,  # the principles header is shared by every prompt of a round
    }
    if on_cuda:
        arguments["gpu_memory_utilization"] = settings.gpu_memory_utilization
    else:
        # Per-prompt seeds and chunked prefill crash vLLM 0.31's CPU build ("CPU Generator does not use offset"):
        # prompts are prefilled whole instead.
        arguments["enable_chunked_prefill"] = False
    return arguments


class VLLMColocateEngine:
    """A `vllm.LLM` in this process's control; generates in its child processes."""

    name = "vllm-colocate"

    def __init__(
        self, choice: EngineChoice, settings: EngineSettings, tokenizer: PreTrainedTokenizerBase, work_dir: Path, seed: int
    ):
        check_main_guard()
        from vllm import LLM

        self.tokenizer = tokenizer
        self.dtype = choice.dtype
        self.lora_mode = choice.lora_mode
        self.work_dir = Path(work_dir)
        self.current = EngineWeights(base=choice.base)
        self.lora_request = None
        self._lora_ids = 0
        kwargs = dict(
            model=choice.base,
            dtype=choice.dtype,
            seed=seed,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            **engine_arguments(settings, choice.on_cuda),
        )
        if choice.quantization:
            kwargs["quantization"] = choice.quantization
        if choice.lora_mode == "adapter":
            kwargs.update(enable_lora=True, max_lora_rank=choice.max_lora_rank, max_loras=1)
        started = time.perf_counter()
        environment = engine_environment(settings, choice.on_cuda)
        os.environ.update(environment)  # the engine's processes inherit it when they start
        try:
            self.llm = LLM(**kwargs)
        except Exception as err:
            raise EngineError(f"vLLM could not start on {choice.base!r} ({type(err).__name__}: {err}).") from err
        finally:
            for name in environment:
                os.environ.pop(name, None)
        self.start_seconds = time.perf_counter() - started

    def load(self, weights: EngineWeights, model=None) -> float:
        if weights == self.current:
            return 0.0
        started = time.perf_counter()
        if self.lora_mode == "adapter":
            check_adapter_engine_weights(weights)
            self.lora_request = None
            if weights.kind == "adapter":
                from vllm.lora.request import LoRARequest

                self._lora_ids += 1
                self.lora_request = LoRARequest(weights.tag, self._lora_ids, weights.folder)
        else:
            path = reload_folder(weights, model, self.work_dir, self.dtype)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
            self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights
        self.current = weights
        return time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        stop = StopRule.build(self.tokenizer, settings.stop_strings)
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in encode_prompts(self.tokenizer, prompts)]
        params = [SamplingParams(**sampling_fields(settings, stop, prompt_seed(settings.seed, i))) for i in range(len(prompts))]
        outputs = self.llm.generate(
            inputs, params, lora_request=self.lora_request, use_tqdm=functools.partial(tqdm, desc=desc)
        )
        return [
            result_from_vllm(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason, stop)
            for o in outputs
        ]

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
