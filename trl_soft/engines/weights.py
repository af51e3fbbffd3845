"""A LoRA round's weights merged into the base, written as one safetensors file a vLLM engine reloads in place.

On a CPU, vLLM's LoRA kernels are slow (an adapter made generation about 2.8x slower in the issue's measurement),
so by default the CPU engines generate from merged weights instead: W + scale * B @ A for every adapted matrix,
computed from the training model in memory with PEFT's own `get_delta_weight`, layer by layer (no second copy of
the model). The training model is left untouched: nothing is merged into it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def _plain_lora_layers(model, adapter: str) -> dict[str, torch.nn.Module]:
    """Module name -> LoRA-wrapped linear layer, for the active adapter; other LoRA variants are refused."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        if type(module) is not LoraLinear or module.use_dora.get(adapter, False):
            raise ValueError(
                f"`vllm_lora_mode='merged'` handles plain LoRA on linear layers; {name} is a "
                f"{type(module).__name__}{' with DoRA' if module.use_dora.get(adapter, False) else ''}. Use "
                "`vllm_lora_mode='adapter'` or `generation_backend='hf'`."
            )
        layers[name] = module
    return layers


@torch.no_grad()
def merged_state_dict(peft_model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The base model's state dict with the active adapter merged in, under the base model's own names."""
    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    layers = _plain_lora_layers(base, adapter)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if any(part in name for part in LORA_PARTS) or ".original_module." in name:
            continue
        clean = name.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
        module_name, _, leaf = clean.rpartition(".")
        if leaf == "weight" and module_name in layers:
            tensor = tensor.float() + layers[module_name].get_delta_weight(adapter).float()
        state[clean] = tensor.detach().to(dtype=dtype, device="cpu").contiguous()
    if getattr(base.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embeddings, which are saved
    return state


def export_merged_weights(peft_model, folder: str | Path, dtype: torch.dtype) -> Path:
    """Write the merged weights to `folder/model.safetensors` (via a `.partial` folder renamed into place)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(merged_state_dict(peft_model, dtype), str(partial / "model.safetensors"), metadata={"format": "pt"})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def reload_folder(weights, model, work_dir: str | Path, dtype: str) -> str:
    """The folder an engine reloads its weights from for `weights` (an `EngineWeights`): the saved full weights or
    the base as they are, a LoRA round merged from the training `model` into `work_dir` first."""
    if weights.kind != "adapter":
        return weights.path
    if model is None:
        raise ValueError("Merging a LoRA round for vLLM needs the training model.")
    return str(export_merged_weights(model, work_dir, TORCH_DTYPES[dtype]))


def check_adapter_engine_weights(weights) -> None:
    """An engine in adapter mode holds the base weights for good: it takes adapters and the base, never full weights."""
    if weights.kind == "full":
        raise ValueError("A LoRA engine (`vllm_lora_mode='adapter'`) was given full weights to load.")
