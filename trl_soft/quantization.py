"""Checks for k-bit (QLoRA) runs, made before any weights are loaded.

4-bit weights cannot be fine-tuned directly; a QLoRA run trains LoRA adapters on top of them, generates from the
quantized base + adapter (no merge into quantized weights), and saves only the adapter. bitsandbytes runs NF4 on
CUDA GPUs and, from the 0.4x releases on, on x86-64 CPUs (checked here with 0.50); anywhere else loading would fail
deep inside `from_pretrained`, so the combination is refused up front.
"""

from __future__ import annotations

import importlib.util
import platform
from typing import Any

import torch

CPU_ARCHITECTURES = ("x86_64", "amd64")


def wants_kbit(quantization_config: Any) -> bool:
    """True when a quantization config (object or dict) asks for bitsandbytes 4-bit or 8-bit weights."""
    if isinstance(quantization_config, dict):
        return bool(quantization_config.get("load_in_4bit") or quantization_config.get("load_in_8bit"))
    return bool(
        getattr(quantization_config, "load_in_4bit", False) or getattr(quantization_config, "load_in_8bit", False)
    )


def check_kbit_supported(quantization_config: Any, peft_config: Any, model: Any) -> None:
    """Refuse a k-bit run that cannot work here, naming the flag and the fix."""
    if not wants_kbit(quantization_config):
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "`--load_in_4bit` / `--load_in_8bit` needs bitsandbytes: `pip install 'bitsandbytes>=0.45'`, or drop the "
            "flag to train in full precision."
        )
    machine = platform.machine().lower()
    if not torch.cuda.is_available() and machine not in CPU_ARCHITECTURES:
        raise ValueError(
            f"`--load_in_4bit`: bitsandbytes has no k-bit kernels for this machine (no CUDA GPU, CPU architecture "
            f"{machine!r}; CPU support covers x86-64). Run on a CUDA GPU or an x86-64 CPU, or drop the flag."
        )
    already_peft = hasattr(model, "peft_config")
    if peft_config is None and not already_peft:
        raise ValueError(
            "`--load_in_4bit` without `--use_peft`: quantized weights cannot be fine-tuned directly. Add `--use_peft` "
            "(with `--lora_r`, `--lora_target_modules`, ...) or pass a `peft_config`: that is QLoRA."
        )
