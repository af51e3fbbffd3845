"""Which engine generates, decided before any weights load, and said out loud.

`generation_backend='auto'` (the default) takes vLLM when it can run this model here, and transformers otherwise;
`'vllm'` insists and explains what stands in the way; `'hf'` is transformers. Whatever is chosen, `EngineChoice`
carries the reason, which the trainer prints and records in the run manifest.

The choice knows the installed engine rather than a version table: whether vLLM can load a bitsandbytes (4-bit) base
is read from its quantization registry. Where it cannot, the engine serves the base unquantized (the base path is the
un-quantized folder or hub id anyway) with each round's LoRA adapter, or quantized with a method the registry has
(`vllm_quantization`). The engine's `max_model_len` is what the run needs (`fit_max_model_len`), never the model's
whole context, and the colocated engine on CUDA sleeps while the model trains (`EngineChoice.sleep_mode`).

On CUDA the choice is then held against the memory plan (`fit_memory`, `trl_soft.memory`): vLLM is kept only when
its weights and KV cache fit beside what training holds, with the GPU share the plan leaves it; otherwise `auto`
falls back to transformers and `vllm` is refused, both with the numbers, before the training model loads.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoConfig

from ..errors import EngineUnavailable, PlanError
from ..memory import PROMPT_TOKENS_ESTIMATE, GenerationShape, MemoryPlan
from ..security import redact_url
from .settings import EngineSettings, resolve_dtype, smallest_lora_rank

VLLM_INSTALL_HINT = (
    "install it (`make setup` installs vLLM's CPU build; on CUDA machines `pip install 'trl-soft[vllm]'`)"
)


@dataclass(frozen=True)
class ModelFacts:
    """What the choice depends on, read without loading weights."""

    path: str | None  # a folder or hub id vLLM can load the base weights from; None for an object with neither
    architecture: str | None  # from config.json, when it can be read
    kbit: bool  # bitsandbytes 4-/8-bit base
    lora_rank: int | None  # None: full fine-tuning
    on_cuda: bool
    local_vllm: bool  # `import vllm` would work here


def _loadable(name: str) -> bool:
    """A folder, or something shaped like a hub id ('org/name')."""
    if os.path.isdir(name):
        return True
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def lora_rank(peft_config, model) -> int | None:
    """The largest LoRA rank the run trains (from `peft_config`, or a PEFT model's own), None without LoRA."""
    if peft_config is None and hasattr(model, "peft_config") and not isinstance(model, str):
        peft_config = next(iter(model.peft_config.values()), None)
    if peft_config is None or not hasattr(peft_config, "r"):
        return None
    return max([int(peft_config.r), *(int(v) for v in (getattr(peft_config, "rank_pattern", None) or {}).values())])


def read_model_facts(model, peft_config, kbit: bool, on_cuda: bool) -> ModelFacts:
    """`model` is what the trainer got: a resolved path or hub id, or a model object."""
    if isinstance(model, str):
        path = model
    else:
        config = getattr(model, "config", None)
        name = str(getattr(config, "_name_or_path", "") or "")
        path = name if name and _loadable(name) else None
        kbit = kbit or bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    return ModelFacts(
        path=path,
        architecture=read_architecture(path),
        kbit=kbit,
        lora_rank=lora_rank(peft_config, model),
        on_cuda=on_cuda,
        local_vllm=vllm_installed(),
    )


@dataclass(frozen=True)
class EngineChoice:
    backend: str  # 'hf' or 'vllm'
    reason: str
    mode: str | None = None  # 'colocate' or 'server'
    dtype: str | None = None
    lora_mode: str | None = None  # 'adapter', 'merged', or None for full fine-tuning
    max_lora_rank: int | None = None
    quantization: str | None = None  # the engine's quantization method (None: the base as saved, in `dtype`)
    base: str | None = None
    on_cuda: bool = False
    max_model_len: int | None = None  # set once the prompts are counted (`with_lengths`); None: not yet known
    sleep_mode: bool = False  # the colocated engine sleeps while the model trains and scores (CUDA only)
    gpu_memory_utilization: float | None = None  # on CUDA: the share the memory plan gives vLLM (`fit_memory`)

    @property
    def sleep_level(self) -> int:
        """1 (weights offloaded to CPU memory, kept) when the base never changes (LoRA adapters); 2 (weights
        discarded) when every round reloads them from its folder anyway (full or merged weights)."""
        return 1 if self.lora_mode == "adapter" else 2

    def describe(self) -> str:
        if self.backend == "hf":
            return f"transformers (generate in the training process): {self.reason}"
        weights = {"adapter": "LoRA adapter per round", "merged": "LoRA merged per round", None: "full weights per round"}
        parts = [self.mode, self.dtype if self.quantization is None else f"{self.quantization} base", weights[self.lora_mode]]
        if self.max_model_len is not None:
            parts.append(f"max_model_len {self.max_model_len}")
        if self.sleep_mode:
            parts.append(f"sleeps at level {self.sleep_level} while the model trains")
        if self.gpu_memory_utilization is not None:
            parts.append(f"gpu_memory_utilization {self.gpu_memory_utilization:.2f}")
        return f"vLLM ({', '.join(str(p) for p in parts)}): {self.reason}"

    def with_lengths(self, need: int, context: int | None, explicit: int | None) -> EngineChoice:
        """This choice with the engine's `max_model_len` (`fit_max_model_len`); unchanged for transformers."""
        if self.backend != "vllm":
            return self
        return replace(self, max_model_len=fit_max_model_len(need, context, explicit))


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def load_vllm() -> ModuleType:
    """The `vllm` module with the submodules trl-soft uses (`vllm_modules.py`), imported on first use: the one import
    of vLLM, an optional dependency too slow (and too eager to configure logging) for `import trl_soft`."""
    from .vllm_modules import vllm

    return vllm


def read_architecture(path: str | None) -> str | None:
    """The model's architecture from its config.json (a local folder, or the hub's copy when it can be had)."""
    if path is None:
        return None
    try:
        if os.path.isdir(path):
            architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures")
        else:
            architectures = AutoConfig.from_pretrained(path).architectures
    except Exception:  # no config to be had (offline, private): vLLM itself will say at start-up
        return None
    return architectures[0] if architectures else None


# `max_model_len` is rounded up to a multiple of this (the KV cache is allocated in blocks anyway; a few prompts
# longer than the ones counted, such as other exemplars' seams, still fit).
MODEL_LEN_STEP = 256


def fit_max_model_len(need: int, context: int | None, explicit: int | None) -> int | None:
    """The engine's `max_model_len`: `vllm_max_model_len` when set (the prompt check has held it against the longest
    round prompt already), else `need` (the longest prompt the engine will be sent plus its answer), rounded up to a
    multiple of `MODEL_LEN_STEP` and capped by the model's context. Never the model's whole context by default: vLLM reserves
    KV-cache memory for one sequence of `max_model_len`, which for a 131,072-token Llama-3.1 is ~16 GiB and stops it
    from starting."""
    if explicit is not None:
        return explicit
    if need <= 0:
        return None  # nothing counted: vLLM's own default
    fitted = math.ceil(need / MODEL_LEN_STEP) * MODEL_LEN_STEP
    return min(fitted, context) if context is not None else fitted


@cache
def vllm_quantization_methods() -> tuple[str, ...]:
    """The quantization methods the installed vLLM can load: its registry, read (not a table of versions)."""
    return tuple(load_vllm().model_executor.layers.quantization.QUANTIZATION_METHODS)


def _check_quantization_hardware(method: str) -> None:
    """A method the registry has but this GPU cannot run (e.g. fp8 below its minimum compute capability)."""
    try:
        minimum = load_vllm().model_executor.layers.quantization.get_quantization_config(method).get_min_capability()
    except Exception:  # a method that cannot say: vLLM says at start-up
        return
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < minimum:
        raise EngineUnavailable(
            f"`vllm_quantization`={method!r} needs a GPU of compute capability {minimum / 10:.1f} or newer; this one is "
            f"{major}.{minor}. Use 'none' (the base unquantized) or another method."
        )


def engine_quantization(settings: EngineSettings, facts: ModelFacts) -> tuple[str | None, str]:
    """The engine's quantization method (None: the base as saved) and a note for the reason ('' when none is due).

    Raises `EngineUnavailable` for a named method the installed vLLM does not have, whatever `generation_backend`
    says: the name was asked for and would fail only when the engine starts, after the model has loaded and round 0
    has been scored."""
    asked = settings.quantization
    if settings.external_server or not facts.local_vllm:
        return None, ""  # a server somebody else runs serves what it was started with
    if asked == "none":
        return None, " (the 4-bit base served unquantized: `vllm_quantization='none'`)" if facts.kbit else ""
    methods = vllm_quantization_methods()
    if asked == "auto":
        if not facts.kbit:
            return None, ""
        if "bitsandbytes" in methods:
            return "bitsandbytes", ""
        return None, (
            "; the base is 4-bit but the installed vLLM has no bitsandbytes loader (not in its quantization "
            "registry), so the engine serves the unquantized base with each round's adapter (`vllm_quantization` "
            "can name a method it has, e.g. 'fp8'; docs/scaling.md weighs the two)"
        )
    if asked not in methods:
        raise EngineUnavailable(
            f"`vllm_quantization`={asked!r} is not a quantization method of the installed vLLM (its registry has "
            f"{', '.join(sorted(methods))}). Use 'auto', 'none', or one of those."
        )
    if facts.on_cuda:
        _check_quantization_hardware(asked)
    return asked, ""


def vllm_supports(architecture: str) -> bool:
    return architecture in load_vllm().ModelRegistry.get_supported_archs()


def _obstacle(settings: EngineSettings, facts: ModelFacts) -> str | None:
    """Why vLLM cannot generate for this run, or None. Cheap checks first; the architecture check imports vLLM."""
    if not facts.local_vllm and not settings.external_server:
        return f"vLLM is not installed: {VLLM_INSTALL_HINT}"
    if facts.path is None:
        return (
            "the model was passed as an object with no folder or hub id behind it, and vLLM loads weights from one: "
            "pass `model` as a path or hub id (save yours with `save_pretrained`)"
        )
    if facts.kbit and not facts.on_cuda:
        return "the base model is quantized with bitsandbytes, which vLLM's CPU build cannot load"
    if facts.architecture and not settings.external_server and not vllm_supports(facts.architecture):
        return f"vLLM does not support the architecture {facts.architecture}"
    return None


def choose_engine(settings: EngineSettings, facts: ModelFacts) -> EngineChoice:
    """The engine for this run; raises `EngineUnavailable` when `generation_backend='vllm'` cannot be honoured."""
    if settings.backend == "hf":
        return EngineChoice("hf", "`generation_backend='hf'`")
    obstacle = _obstacle(settings, facts)
    if obstacle is not None:
        if settings.backend == "vllm":
            raise EngineUnavailable(
                f"`generation_backend='vllm'`: {obstacle}. Or set `generation_backend='hf'` (or 'auto', which falls "
                "back to transformers by itself)."
            )
        return EngineChoice("hf", f"`generation_backend='auto'` fell back: {obstacle}")

    lora_mode = max_rank = None
    if facts.lora_rank is not None:
        lora_mode = settings.lora_mode
        if lora_mode == "auto":  # CPU LoRA kernels are slow: merging is faster there (benchmarks/README.md)
            lora_mode = "adapter" if facts.on_cuda or facts.kbit else "merged"
        if facts.kbit and lora_mode == "merged":
            raise EngineUnavailable(
                "`vllm_lora_mode='merged'` cannot be used with a 4-bit base: the training model's packed 4-bit "
                "weights cannot be merged into a folder vLLM reloads. Use `vllm_lora_mode='adapter'` (the engine "
                "loads the base itself, see `vllm_quantization`)."
            )
        if lora_mode == "adapter":
            max_rank = settings.max_lora_rank or smallest_lora_rank(facts.lora_rank)
            if max_rank is None or facts.lora_rank > max_rank:
                raise EngineUnavailable(
                    f"The LoRA rank is {facts.lora_rank}, above `vllm_max_lora_rank`={max_rank}: vLLM could not load "
                    "the adapters. Raise `vllm_max_lora_rank` (or leave it unset), lower `lora_r`, or set "
                    "`vllm_lora_mode='merged'`."
                )
    quantization, note = engine_quantization(settings, facts)
    how = "asked for" if settings.backend == "vllm" else "`generation_backend='auto'`: vLLM is installed"
    if settings.external_server:
        servers = settings.server_base_url
        servers = [servers] if isinstance(servers, str) else list(servers or ())
        how += f", server{'s' if len(servers) > 1 else ''} at {', '.join(redact_url(u) for u in servers)}"
    elif facts.architecture:
        how += f" and supports {facts.architecture}"
    how += note
    return EngineChoice(
        backend="vllm",
        reason=how,
        mode=settings.vllm_mode,
        dtype=resolve_dtype(settings.dtype, facts.on_cuda),
        lora_mode=lora_mode,
        max_lora_rank=max_rank,
        quantization=quantization,
        base=facts.path,
        on_cuda=facts.on_cuda,
        # vLLM's CPU platform has no sleep mode (`is_sleep_mode_available()` is False there), nor does a server
        sleep_mode=settings.sleep_mode and facts.on_cuda and settings.vllm_mode == "colocate",
    )


def fit_memory(
    choice: EngineChoice, settings: EngineSettings, plan_for: Callable[[EngineChoice], MemoryPlan], total: int | None
) -> tuple[EngineChoice, MemoryPlan | None]:
    """Hold a vLLM choice on CUDA against the memory plan for a GPU of `total` bytes (per process; None: no CUDA, so
    no GPU constraint). Fits: the choice with the GPU share the plan leaves vLLM. Does not fit: `auto` falls back to
    transformers, `vllm` raises `EngineUnavailable`; both say why with the numbers. Also returns the plan of the
    engine chosen (None when there is nothing to plan: no CUDA, a server somebody else runs, a config without sizes)."""
    if total is None or choice.backend != "vllm" or not choice.on_cuda or settings.external_server:
        return choice, None
    try:
        plan = plan_for(choice)
    except PlanError as err:
        return replace(choice, reason=f"{choice.reason}; no memory plan ({err})"), None
    verdict = plan.verdict(total)
    if verdict.fits:
        return replace(choice, gpu_memory_utilization=verdict.share,
                       reason=f"{choice.reason}; the memory plan {verdict.describe()}"), plan
    if settings.backend == "vllm":
        raise EngineUnavailable(
            f"`generation_backend='vllm'`: the memory plan says vLLM {verdict.describe()}.\n{plan.table(total)}\n"
            "Set `generation_backend='auto'` (it falls back to transformers) or 'hf'; or make room: a smaller "
            "`generation_batch_size` or `vllm_max_model_len`, `vllm_quantization` (e.g. 'fp8'), "
            "`vllm_tensor_parallel_size` > 1, or `vllm_mode='server'` on GPUs of its own (`vllm_server_devices`)."
        )
    fallback = EngineChoice("hf", f"`generation_backend='auto'` fell back: the memory plan says vLLM {verdict.describe()}")
    hf_plan = plan_for(fallback)
    return fallback, hf_plan


def generation_shape(choice: EngineChoice, settings: EngineSettings, batch_size: int,
                     prompt_tokens: int = PROMPT_TOKENS_ESTIMATE) -> GenerationShape:
    """What the memory plan needs to know of the chosen engine: `batch_size` (`generation_batch_size`) sequences at
    once of `max_model_len` tokens (the run's, or `prompt_tokens` plus an answer when nothing was counted)."""
    length = choice.max_model_len or settings.max_model_len or prompt_tokens + 256
    return GenerationShape(
        engine=choice.backend,
        dtype=choice.dtype or "bfloat16",
        quantization=choice.quantization,
        max_model_len=length,
        sequences=batch_size,
        prompt_tokens=min(prompt_tokens, length),
        tensor_parallel=settings.tensor_parallel_size,
        sleep=choice.sleep_mode,
        eager=bool(settings.enforce_eager),
        lora_rank=choice.max_lora_rank if choice.lora_mode == "adapter" else None,
        own_gpu=choice.mode == "server" and bool(settings.server_devices),
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
