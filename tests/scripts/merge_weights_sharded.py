"""Run under torchrun (2 processes, gloo, CPU): a tiny random Llama with a random LoRA adapter, trained one step
under FSDP2 (`fully_shard`), merged through `trl_soft.engines.weights` on every process. Writes, into the folder
given as the first argument: `merged/model.safetensors` (from the sharded model), `reference.safetensors` (PEFT's
`merge_and_unload` of an unsharded copy trained the same step) and `result.json` (what each check saw). Then an
FSDP1-wrapped copy must be refused on every process before any gather, with nested units and with the root
wrapper only."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_llama  # noqa: E402
from trl_soft.distributed import process_state  # noqa: E402
from trl_soft.engines.base import EngineWeights  # noqa: E402
from trl_soft.engines.weights import (  # noqa: E402
    export_merged_weights,
    model_sharding,
    prepare_merged_weights,
    reload_folder,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]


def lora_llama(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(tokenizer, seed=0)
    # random B (init_lora_weights=False): the adapter changes the weights before any training
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))


def train_step(model, batch) -> None:
    """One SGD step on the same batch on every process: FSDP2 averages identical gradients, so the sharded model and
    the unsharded copy take the same step."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main(out: str, tokenizer_path: str) -> None:
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from transformers import AutoTokenizer

    out_dir = Path(out)
    state = process_state()  # gloo on CPU, as accelerate sets it up
    rank, world = state.process_index, state.num_processes
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    batch = torch.tensor([tokenizer("Rounds of self-alignment, step on feet.").input_ids] * 2)
    result: dict = {"world": world}

    # the reference: the same model and step, unsharded, merged by PEFT
    reference = lora_llama(tokenizer)
    train_step(reference, batch)
    unmerged_q = reference.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    merged_reference = reference.merge_and_unload().state_dict()
    if rank == 0:
        save_file({k: v.contiguous() for k, v in merged_reference.items()}, str(out_dir / "reference.safetensors"))
    result["adapter_changes_q"] = not torch.allclose(merged_reference["model.layers.0.self_attn.q_proj.weight"],
                                                     unmerged_q)

    # the sharded model: every decoder layer its own FSDP2 unit, then the root (as accelerate's fsdp2 config does)
    model = lora_llama(tokenizer)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.get_base_model().model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    train_step(model, batch)
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    result["sharding"] = model_sharding(model.get_base_model())
    result["local_q_shape"] = list(q.base_layer.weight.to_local().shape)
    result["local_lora_A_shape"] = list(q.lora_A["default"].weight.to_local().shape)

    # the engine's path: the main process alone may not gather (it would wait for the others forever)
    weights = EngineWeights(base="base", kind="adapter", folder=str(out_dir / "round_1"), tag="round_1")
    work_dir = out_dir / "engine_weights"
    if rank == 0:
        try:
            reload_folder(weights, model, work_dir, "float32")
            result["unprepared_reload"] = "no error"
        except RuntimeError as err:
            result["unprepared_reload"] = str(err)
    result["prepare_seconds"] = prepare_merged_weights(weights, model, work_dir, "float32")
    result["prepare_again_seconds"] = prepare_merged_weights(weights, model, work_dir, "float32")  # already there
    if rank == 0:
        result["reload_folder"] = reload_folder(weights, model, work_dir, "float32")
    export_merged_weights(model, out_dir / "merged", torch.float32)  # every process, the main one writes

    # FSDP1: refused on every process before any gather, so no process waits
    fsdp1 = lora_llama(tokenizer)
    inner = fsdp1.get_base_model().model
    for i, layer in enumerate(inner.layers):
        inner.layers[i] = FullyShardedDataParallel(layer, device_id=torch.device("cpu"), use_orig_params=True)
    try:
        export_merged_weights(fsdp1, out_dir / "fsdp1", torch.float32)
        result["fsdp1"] = "no error"
    except ValueError as err:
        result["fsdp1"] = str(err)
    # FSDP1 with the root wrapper only, unwrapped as `accelerator.unwrap_model` does: no FSDP unit is left inside,
    # the parameters are flat views of this process's shard; the shape check refuses them
    root_only = FullyShardedDataParallel(lora_llama(tokenizer), device_id=torch.device("cpu"), use_orig_params=True)
    try:
        export_merged_weights(root_only.module, out_dir / "fsdp1_root", torch.float32)
        result["fsdp1_root"] = "no error"
    except ValueError as err:
        result["fsdp1_root"] = str(err)

    results = [None] * world
    dist.all_gather_object(results, result)
    if rank == 0:
        (out_dir / "result.json").write_text(json.dumps(results, indent=1))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
