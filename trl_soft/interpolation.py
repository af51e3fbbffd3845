"""The returned model nearer the start: the chosen round's change from the starting model, scaled.

With `final_interpolation` t < 1 the final model is not the chosen round's weights W but W0 + t (W - W0), W0 the
starting model's: a weight-space interpolation between the starting and the fine-tuned model (WiSE-FT, Wortsman et al.
2022, "Robust fine-tuning of zero-shot models"; model averaging, Lin et al. 2024, "Mitigating the Alignment Tax of
RLHF", where it gave the best trade-off between what alignment gains and what it costs elsewhere). In the demo
the TruthfulQA MC2 loss fell in proportion to t while most of the behaviour gain stayed (docs/behaviour.md).

It works on the saved folders, tensor by tensor (no second copy of the model in memory, whatever the sharding):

- a LoRA adapter that started from zero (PEFT's `lora_B` initialised to zeros, the default): every `lora_B` tensor is
  scaled by t, which scales the adapter's change B A exactly; any other trained tensor of the adapter (e.g.
  `modules_to_save`) is interpolated with the starting adapter's. An adapter that did not start from zero is refused:
  interpolating both factors of B A does not interpolate their product.
- full weights: every tensor is interpolated with the starting model's tensor of the same name (in float32, then back
  to its own dtype).

Only `.safetensors` weights are read; the folders must hold the same tensor names (both written by the same run).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ADAPTER_CONFIG = "adapter_config.json"
LORA_UP = ("lora_B", "lora_embedding_B")  # the factor that starts at zero: scaling it scales the change
FIELD = "final_interpolation"


def is_lora_up(name: str) -> bool:
    """A LoRA up-projection tensor, in memory (`...lora_B.default.weight`) or saved (`...lora_B.weight`)."""
    return any(f".{part}." in f"{name}." for part in LORA_UP)


def weight_files(folder: Path) -> list[Path]:
    """A saved model's or adapter's weight files (safetensors); anything else is refused naming the field."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        found = ", ".join(sorted(p.name for p in Path(folder).iterdir())) or "nothing"
        raise ValueError(f"`{FIELD}`: {folder} holds no .safetensors weights ({found}); the interpolation reads only "
                         "safetensors. Keep `save_safetensors` on (the default), or set the field to 1.")
    return files


def check_starts_at_zero(model) -> None:
    """Before round 1: an adapter must start from zero (`lora_B` all zeros) for its change to be scaled exactly."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    dora = [name for name, _ in trained if "lora_magnitude_vector" in name]
    if dora:
        raise ValueError(f"`{FIELD}` < 1 cannot scale a DoRA adapter's change ({dora[0]}: its magnitude is not an "
                         f"added change). Use plain LoRA (`use_dora` off), or set `{FIELD}` to 1.")
    with torch.no_grad():
        moved = [name for name, p in trained if is_lora_up(name) and p.numel() > 0 and bool(p.abs().amax() > 0)]
    if moved:
        raise ValueError(
            f"`{FIELD}` < 1 needs a LoRA adapter that starts from zero, but {len(moved)} lora_B tensor(s) of this one "
            f"are not zero (e.g. {moved[0]}): scaling an adapter that was already trained does not interpolate the "
            "model. Start from a fresh adapter (PEFT's default initialisation), merge the old one into the base "
            f"model first, or set `{FIELD}` to 1."
        )


def interpolate_folder(start: Path, final: Path, t: float) -> int:
    """Rewrite the weights saved in `final` as the starting weights (`start`) plus `t` times the change (see the module
    docstring); each file is written atomically. Returns the number of tensors changed."""
    start, final = Path(start), Path(final)
    adapter = (final / ADAPTER_CONFIG).is_file()
    final_files = weight_files(final)
    start_files = {p.name: p for p in weight_files(start)}
    changed = 0
    for path in final_files:
        if path.name not in start_files:
            raise ValueError(f"`{FIELD}`: {path.name} is in {final} but not in the starting model's {start}; both "
                             "must be saved by the same run.")
        tensors = {}
        with safe_open(str(path), framework="pt") as handle, safe_open(str(start_files[path.name]),
                                                                       framework="pt") as origin:
            metadata, names = handle.metadata(), set(origin.keys())
            for name in handle.keys():
                value = handle.get_tensor(name)
                if adapter and "lora_" in name:  # the factors of B A: B started at zero (t B), A as trained
                    if is_lora_up(name):
                        value = (value.float() * t).to(value.dtype)
                        changed += 1
                    tensors[name] = value
                    continue
                if name not in names:
                    raise ValueError(f"`{FIELD}`: tensor {name} of {final} is not in the starting model's {start}.")
                before = origin.get_tensor(name)
                if before.shape != value.shape:
                    raise ValueError(f"`{FIELD}`: tensor {name} is {tuple(before.shape)} at the start and "
                                     f"{tuple(value.shape)} in {final}; the folders are not the same model.")
                if value.is_floating_point():
                    value = (before.float() + t * (value.float() - before.float())).to(value.dtype)
                    changed += 1
                tensors[name] = value
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)
    return changed
