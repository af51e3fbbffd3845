"""`vllm_mode='colocate'`: a `vllm.LLM` engine owned by the training process.

vLLM V1 runs the engine in child processes (started with `spawn` on CPUs and once CUDA is initialised): the training
process keeps its own threads and memory, and the script that builds the engine must guard its entry point with
`if __name__ == "__main__":` (checked here before anything starts); on CUDA with an engine on every process
(`ranks.py`, vLLM's external_launcher) it runs in the training process instead. Memory: on a GPU the engine takes
`vllm_gpu_memory_utilization` of it; on a CPU its KV cache takes `vllm_cpu_kv_cache_gb`. Its `max_model_len` is
what the run needs (`EngineChoice.max_model_len`), not the model's whole context.

Sleep mode (CUDA only; vLLM's CPU platform has none): the engine is built with `enable_sleep_mode=True` and sleeps
while the model trains (`sleep`), waking before it generates (`wake`). Level 1 with LoRA adapters (the base weights go
to CPU memory and come back); level 2 with full or merged weights (they are discarded, and the weights the engine
should hold are reloaded from their folder after waking: the next `load` does it, whatever it was last given).

Weights, once per round, from the folder the round was saved to:
- full fine-tuning: the engine reloads its weights in place from `round_t/model` (`reload_weights`), and its prefix
  cache, computed with the old weights, is dropped;
- LoRA, `adapter` mode: every request carries the round's adapter (`LoRARequest`); the base weights never change;
- LoRA, `merged` mode: the adapter is merged into the base from the training model (`weights.py`) into
  `output_dir/engine_weights/`, and reloaded like full weights.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import EngineError
from ..generation import GenerationResult, GenerationSettings
from ..progress import bar_factory, show_load_bars  # inside a phase: its one bar, not one per call
from .base import EngineWeights, StopRule, encode_prompts, prompt_seed, result_from_vllm, sampling_fields
from .choice import EngineChoice, load_vllm
from .ranks import RankPlacement
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


def engine_environment(settings: EngineSettings, on_cuda: bool, in_process: bool = False) -> dict[str, str]:
    """Environment the engine's processes must start with (read by vLLM at start-up); the user's own values win.
    `in_process`: the engine runs in this process (`runs_in_process`) instead of its own."""
    env = {}
    if not on_cuda:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_cache_gb)
        if (os.cpu_count() or 1) <= SMALL_CPU_CORES:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return {k: v for k, v in env.items() if k not in os.environ}


def runs_in_process(on_cuda: bool, placement: RankPlacement | None) -> bool:
    """Whether a colocated engine runs in the training process: a lone engine on a small CPU (up to
    `SMALL_CPU_CORES`) does. Its own processes would cost their start (measured on 2 cores, the embedded model: 23 s
    against 4 s in process) and, while generating, a scheduler process that takes CPU time from the one doing the work.
    In process, vLLM's CPU worker binds this process's memory to its NUMA node (it prints a `NUMA binding` warning),
    which costs nothing on one node but could confine training on a large multi-socket machine, so larger CPUs keep
    vLLM's own processes. On CUDA, and for one engine per rank (each must not join the ranks' process group), vLLM
    keeps its own processes too, as it does where the user set `VLLM_ENABLE_V1_MULTIPROCESSING` to anything but 0."""
    return (not on_cuda and placement is None and (os.cpu_count() or 1) <= SMALL_CPU_CORES
            and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "0")


def engine_arguments(
    settings: EngineSettings, on_cuda: bool, sleeps: bool = False, share: float | None = None
) -> dict[str, object]:
    """`vllm.LLM` / `vllm serve` settings that follow from the hardware (the same for both modes); `sleeps`: the
    engine sleeps while the model trains, so it may take more of the GPU while awake; `share`: the GPU share the
    memory plan leaves the engine (`EngineChoice.gpu_memory_utilization`), else the fixed default."""
    arguments: dict[str, object] = {
        "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not on_cuda,
        "enable_prefix_caching": True,  # the principles header is shared by every prompt of a round
    }
    if on_cuda:
        arguments["gpu_memory_utilization"] = share if share is not None else settings.gpu_share(sleeps)
    else:
        # Per-prompt seeds and chunked prefill crash vLLM 0.31's CPU build ("CPU Generator does not use offset"):
        # prompts are prefilled whole instead.
        arguments["enable_chunked_prefill"] = False
    if sleeps:
        arguments["enable_sleep_mode"] = True
    return arguments


def sleep_mode_available() -> bool:
    """Whether the platform vLLM runs on here can sleep (CUDA and ROCm can, vLLM 0.31's CPU platform cannot)."""
    return bool(load_vllm().platforms.current_platform.is_sleep_mode_available())


def release_cached_memory() -> None:
    """Return the blocks PyTorch's allocator caches in this process to the GPU (no-op without CUDA)."""
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()


class VLLMColocateEngine:
    """A `vllm.LLM` in this process's control; generates in its child processes."""

    name = "vllm-colocate"

    def __init__(
        self, choice: EngineChoice, settings: EngineSettings, tokenizer: PreTrainedTokenizerBase, work_dir: Path, seed: int,
        placement: RankPlacement | None = None,
    ):
        """`placement`: this process's place when every process runs an engine (`ranks.py`); None for a lone one."""
        in_process = runs_in_process(choice.on_cuda, placement)
        if not in_process and (placement is None or not placement.on_cuda):  # else no process is spawned
            check_main_guard()
        LLM = load_vllm().LLM  # resolved before the engine's environment is set below

        self.tokenizer = tokenizer
        self.dtype = choice.dtype
        self.lora_mode = choice.lora_mode
        self.work_dir = Path(work_dir)
        self.current = EngineWeights(base=choice.base)
        self.lora_request = None
        self._lora_ids = 0
        self.sleeps = choice.sleep_mode and sleep_mode_available()
        self.sleep_level = choice.sleep_level
        self.asleep = False
        kwargs = dict(
            model=choice.base,
            dtype=choice.dtype,
            seed=seed,
            max_model_len=choice.max_model_len or settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            **engine_arguments(settings, choice.on_cuda, self.sleeps, choice.gpu_memory_utilization),
            use_tqdm_on_load=show_load_bars(),  # the shards bar at every start and weight reload: off unless verbose
        )
        if choice.quantization:
            kwargs["quantization"] = choice.quantization
        if choice.lora_mode == "adapter":
            kwargs.update(enable_lora=True, max_lora_rank=choice.max_lora_rank, max_loras=1)
        started = time.perf_counter()
        environment = engine_environment(settings, choice.on_cuda, in_process)
        if placement is not None:
            kwargs.update(placement.engine_arguments())
            environment.update({k: v for k, v in placement.environment().items()
                                if k not in os.environ or k in placement.FORCED})
        previous = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)  # the engine's processes inherit it when they start
        try:
            self.llm = LLM(**kwargs)
        except Exception as err:
            raise EngineError(f"vLLM could not start on {choice.base!r} ({type(err).__name__}: {err}).") from err
        finally:
            for name, value in previous.items():  # as it was: the launcher's own values come back
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.start_seconds = time.perf_counter() - started

    def load(self, weights: EngineWeights, model=None) -> float:
        if weights == self.current:
            return 0.0
        started = time.perf_counter()
        if self.lora_mode == "adapter":
            check_adapter_engine_weights(weights)
            self.lora_request = None
            if weights.kind == "adapter":
                self._lora_ids += 1
                self.lora_request = load_vllm().lora.request.LoRARequest(weights.tag, self._lora_ids, weights.folder)
        else:
            path = reload_folder(weights, model, self.work_dir, self.dtype)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
            self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights
        self.current = weights
        return time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str | None = "Generating", first_index: int = 0
    ) -> list[GenerationResult]:
        """`prompts` are items `first_index`, `first_index + 1`, ... of the whole request (a process answering a
        slice passes its position), which fixes each one's sampling seed; `desc` None: no progress bar."""
        if not prompts:
            return []
        stop = StopRule.build(self.tokenizer, settings.stop_strings)
        vllm = load_vllm()
        inputs = [vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in encode_prompts(self.tokenizer, prompts)]
        params = [
            vllm.SamplingParams(**sampling_fields(settings, stop, prompt_seed(settings.seed, first_index + i)))
            for i in range(len(prompts))
        ]
        progress = bar_factory(desc) if desc is not None else False
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=progress)
        return [
            result_from_vllm(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason, stop)
            for o in outputs
        ]

    def sleep(self) -> None:
        """Free the GPU for training and scoring (no-op without sleep mode, or asleep already)."""
        if not self.sleeps or self.asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self.asleep = True
        release_cached_memory()  # what this process cached while the engine was awake goes back to the GPU

    def wake(self) -> None:
        """Take the GPU back before generating. After a level-2 sleep the weights are gone: the next `load`
        reloads the ones the engine should hold (its record of what it holds is cleared)."""
        if not self.asleep:
            return
        release_cached_memory()  # the training process's cached blocks go back first, or the engine's do not fit
        self.llm.wake_up()
        self.asleep = False
        if self.sleep_level == 2:
            self.current = None  # type: ignore[assignment]  # holds nothing usable: the next `load` reloads

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
