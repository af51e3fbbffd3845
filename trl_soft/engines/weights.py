"""A LoRA round's weights merged into the base, written as one safetensors file a vLLM engine reloads in place.

On a CPU, vLLM's LoRA kernels are slow (an adapter made generation about 2.8x slower in the issue's measurement),
so by default the CPU engines generate from merged weights instead: W + scale * B @ A for every adapted matrix,
computed from the training model in memory, layer by layer (no second copy of the model). The training model is
left untouched: nothing is merged into it.

Under sharded training a process holds only pieces of each matrix, so the merge gathers every matrix whole first,
one adapted layer (W, A, B) or one other tensor at a time, and keeps only the merged result, on the CPU, on the main
process:

- FSDP2 (`fully_shard`; also tensor parallelism): the parameters are DTensors; `full_tensor()` all-gathers one;
- DeepSpeed ZeRO-3: the parameters are empty placeholders (`ds_id`, `ds_status`); `deepspeed.zero.
  GatheredParameters(params, modifier_rank=None)` fills them for the duration of a block;
- FSDP1 is refused: `accelerator.unwrap_model` strips its root wrapper, whose flat parameter (embeddings, norm,
  head) can then no longer be gathered, and its nested units gather on `state_dict()` by themselves.

Gathering is a collective: under FSDP2 or ZeRO-3 every process must call the merge, in the same order. The engine
lives on the main process, so `prepare_merged_weights` is the step every process runs before the engine's `load`;
`reload_folder` (main process only) then returns the prepared folder, and refuses rather than hang when that step was
skipped. Unsharded models (one process, DDP) merge inside `reload_folder` as before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from safetensors.torch import save_file
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

from ..distributed import is_main_process

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")
SHARDINGS = ("none", "dtensor", "zero3", "fsdp1")  # what `model_sharding` answers
# The last weights `prepare_merged_weights` wrote, per engine folder: resolved path -> (EngineWeights, id of the model
# merged). Every process makes the same calls in the same order, so every process holds the same record and skips or
# gathers alike; a new run (a new model object) in the same folder merges again.
_PREPARED: dict[str, tuple[object, int]] = {}


def model_sharding(model) -> str:
    """How `model`'s parameters lie across processes: 'dtensor' (FSDP2 / tensor parallel), 'zero3' (DeepSpeed),
    'fsdp1' (FullyShardedDataParallel, refused), or 'none' (whole on every process: one process, DDP)."""
    if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
        return "fsdp1"
    for parameter in model.parameters():
        if hasattr(parameter, "ds_id") and hasattr(parameter, "ds_status"):
            return "zero3"
        if isinstance(parameter, DTensor):
            return "dtensor"
        if getattr(parameter, "_is_flat_param", False):
            return "fsdp1"
    return "none"


def _check_supported(sharding: str) -> None:
    if sharding == "fsdp1":
        raise ValueError(
            "`vllm_lora_mode='merged'` cannot gather the weights of an FSDP1 model (`fsdp_version: 1`): use FSDP2 "
            "(`fsdp_version: 2`, examples/accelerate_configs/fsdp2.yaml), `vllm_lora_mode='adapter'`, or "
            "`generation_backend='hf'`."
        )
    if sharding == "zero3" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError("The model's parameters are DeepSpeed ZeRO-3 partitions, but `deepspeed` cannot be imported.")


@contextlib.contextmanager
def _gathered(tensors: list[torch.Tensor], sharding: str) -> Iterator[list[torch.Tensor]]:
    """The full values of `tensors` for the duration of the block (a collective under 'dtensor' and 'zero3')."""
    if sharding == "zero3":
        import deepspeed  # not a dependency: only a DeepSpeed ZeRO-3 run has it (`_check_supported`)

        partitioned = [t for t in tensors if hasattr(t, "ds_id")]
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            yield [t.data for t in tensors]
    elif sharding == "dtensor":
        yield [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]
    else:
        yield list(tensors)


def _plain_lora_layers(model, adapter: str) -> dict[str, torch.nn.Module]:
    """Module name -> LoRA-wrapped linear layer, for the active adapter; other LoRA variants are refused."""
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        lora_bias = getattr(module, "lora_bias", {}).get(adapter, False)
        if module.use_dora.get(adapter, False):
            kind = " with DoRA"
        elif adapter in getattr(module, "lora_variant", {}):
            kind = " with a LoRA variant"
        else:
            kind = " with `lora_bias`" if lora_bias else ""
        if type(module) is not LoraLinear or kind:
            raise ValueError(
                f"`vllm_lora_mode='merged'` handles plain LoRA on linear layers; {name} is a "
                f"{type(module).__name__}{kind}. Use `vllm_lora_mode='adapter'` or `generation_backend='hf'`."
            )
        layers[name] = module
    return layers


def _expected_shapes(model, adapter: str) -> dict[str, tuple[int, ...]]:
    """Clean parameter name -> the shape a whole weight has, for the plain linear and embedding layers: a gathered
    tensor of another shape is a shard (a sharding this module does not know), never written as a weight."""
    shapes = {}
    for name, module in model.named_modules():
        clean = name.replace(".base_layer", "").replace(f".modules_to_save.{adapter}", "")
        if type(module) is torch.nn.Linear:
            shapes[f"{clean}.weight"] = (module.out_features, module.in_features)
        elif type(module) is torch.nn.Embedding:
            shapes[f"{clean}.weight"] = (module.num_embeddings, module.embedding_dim)
    return shapes


@torch.no_grad()
def merged_state_dict(peft_model, dtype: torch.dtype, keep: bool = True) -> dict[str, torch.Tensor]:
    """The base model's state dict with the active adapter merged in, under the base model's own names, on the CPU.

    Under FSDP2 or ZeRO-3 every process must call this (each gather is a collective); `keep=False` takes part in
    the gathers and returns nothing (the processes that do not write). One adapted layer's W, A and B (or one other
    tensor) are whole at a time, on their own device."""
    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    sharding = model_sharding(base)
    _check_supported(sharding)  # before state_dict(): FSDP1's nested units gather there, on this process alone
    layers = _plain_lora_layers(base, adapter)
    shapes = _expected_shapes(base, adapter)
    tied = getattr(base.config, "tie_word_embeddings", False)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict(keep_vars=True).items():
        if any(part in name for part in LORA_PARTS) or ".original_module." in name:
            continue
        clean = name.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
        if tied and clean == "lm_head.weight":
            continue  # tied to the embeddings, which are saved
        module_name, _, leaf = clean.rpartition(".")
        layer = layers.get(module_name) if leaf == "weight" else None
        parts = [tensor] if layer is None else [tensor, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
        with _gathered(parts, sharding) as full:
            if full[0].shape != shapes.get(clean, full[0].shape):
                raise ValueError(
                    f"Merging the LoRA weights: {clean} has shape {tuple(full[0].shape)} on this process, not its "
                    f"layer's {shapes[clean]}: the model is sharded in a way this merge cannot gather. Use "
                    "`vllm_lora_mode='adapter'` or `generation_backend='hf'`."
                )
            if not keep:
                continue
            merged = full[0]
            if layer is not None:
                delta = full[2].float() @ full[1].float()  # B @ A, as PEFT's get_delta_weight
                merged = merged.float() + (delta.T if layer.fan_in_fan_out else delta) * layer.scaling[adapter]
            # a copy: under ZeRO-3 the gathered storage is freed when the block ends
            state[clean] = merged.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
    return state


def export_merged_weights(peft_model, folder: str | Path, dtype: torch.dtype) -> Path:
    """Write the merged weights to `folder/model.safetensors` (via a `.partial` folder renamed into place). Under
    FSDP2 or ZeRO-3 every process calls this; only the main process writes."""
    folder = Path(folder)
    main = is_main_process()
    state = merged_state_dict(peft_model, dtype, keep=main)
    if not main:
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def needs_every_process(model) -> bool:
    """Whether merging `model`'s LoRA weights is a collective (FSDP2, ZeRO-3), so that every process must run it."""
    return model is not None and is_peft_model(model) and model_sharding(model.get_base_model()) != "none"


def prepare_merged_weights(weights, model, work_dir: str | Path, dtype: str) -> float:
    """Run on every process before a merged-mode engine's `load(weights, model)`: for a LoRA round of a sharded model,
    gather and merge it into `work_dir` (the main process writes); otherwise nothing (the engine merges in `load`).
    Returns the seconds it took; the same weights twice in a row are merged once."""
    if weights.kind != "adapter" or not needs_every_process(model):
        return 0.0
    key = str(Path(work_dir).resolve())
    if _PREPARED.get(key) == (weights, id(model)):
        return 0.0
    started = time.perf_counter()
    _PREPARED.pop(key, None)
    export_merged_weights(model, work_dir, TORCH_DTYPES[dtype])
    _PREPARED[key] = (weights, id(model))
    return time.perf_counter() - started


def reload_folder(weights, model, work_dir: str | Path, dtype: str) -> str:
    """The folder an engine reloads its weights from for `weights` (an `EngineWeights`): the saved full weights or
    the base as they are, a LoRA round merged from the training `model` into `work_dir` first. Called on the main
    process only; a sharded model's merge must have been prepared on every process (`prepare_merged_weights`)."""
    if weights.kind != "adapter":
        return weights.path
    if model is None:
        raise ValueError("Merging a LoRA round for vLLM needs the training model.")
    if needs_every_process(model):
        _check_supported(model_sharding(model.get_base_model()))
        prepared = _PREPARED.get(str(Path(work_dir).resolve())) == (weights, id(model))
        if not prepared or not (Path(work_dir) / "model.safetensors").is_file():
            raise RuntimeError(
                f"The LoRA weights of {weights.tag} are sharded over the processes (FSDP2 or ZeRO-3): every process "
                "must gather them, with `prepare_merged_weights`, before the main process's engine loads them."
            )
        return str(work_dir)
    return str(export_merged_weights(model, work_dir, TORCH_DTYPES[dtype]))


def check_adapter_engine_weights(weights) -> None:
    """An engine in adapter mode holds the base weights for good: it takes adapters and the base, never full weights."""
    if weights.kind == "full":
        raise ValueError("A LoRA engine (`vllm_lora_mode='adapter'`) was given full weights to load.")
