"""`trl_soft.engines.weights` under sharded training: the merged LoRA weights a vLLM engine reloads are gathered whole
before they are written.

FSDP2 runs for real: torch's `fully_shard` works on CPU over gloo (torch 2.13), so two processes shard a tiny random
Llama with a random LoRA adapter, train it one step, and merge it on every process; the file the main process writes
must equal PEFT's `merge_and_unload` of the same model unsharded, tensor by tensor. FSDP1 (refused) runs for real in
the same script. DeepSpeed ZeRO-3 cannot run here (deepspeed is not installed and needs an accelerator): only its
detection, by the `ds_id`/`ds_status` attributes every partitioned parameter carries, and the clear error when
deepspeed cannot be imported are tested; the gather itself (`deepspeed.zero.GatheredParameters`) is untested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_llama

SCRIPT = Path(__file__).parent / "scripts" / "merge_weights_sharded.py"


@pytest.mark.slow
def test_fsdp2_merged_weights_equal_unsharded_merge_and_unload(tmp_path, smol_path):
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path),
               smol_path]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = json.loads((tmp_path / "result.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2]
    for r in ranks:  # really sharded: each process held half of every matrix, LoRA A included
        assert r["sharding"] == "dtensor" and r["local_q_shape"] == [32, 64] and r["local_lora_A_shape"] == [2, 64]
        assert r["adapter_changes_q"]  # the reference's merge changes the weights, so the comparison below has teeth
        assert r["prepare_again_seconds"] == 0.0  # the same weights twice are gathered once
        assert "FSDP1" in r["fsdp1"] and "cannot gather" in r["fsdp1_root"]
    main = ranks[0]
    assert "every process must gather them" in main["unprepared_reload"]  # refused, not a hang
    assert main["reload_folder"] == str(tmp_path / "engine_weights")

    reference = load_file(str(tmp_path / "reference.safetensors"))
    for written in ("merged", "engine_weights"):
        merged = load_file(str(tmp_path / written / "model.safetensors"))
        assert merged.keys() == reference.keys()
        for name, tensor in reference.items():
            assert merged[name].shape == tensor.shape, name
            torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert not (tmp_path / "merged.partial").exists() and not (tmp_path / "fsdp1").exists()


def _lora_llama(tokenizer):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(make_tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))


def test_unsharded_models_merge_in_the_engine_as_before(tmp_path, tokenizer):
    from trl_soft.engines.base import EngineWeights
    from trl_soft.engines.weights import model_sharding, needs_every_process, prepare_merged_weights, reload_folder

    model = _lora_llama(tokenizer)
    weights = EngineWeights(base="base", kind="adapter", folder=str(tmp_path / "round_1"), tag="round_1")
    assert model_sharding(model.get_base_model()) == "none" and not needs_every_process(model)
    assert prepare_merged_weights(weights, model, tmp_path / "work", "float32") == 0.0  # nothing to do on every rank
    assert not (tmp_path / "work").exists()
    assert reload_folder(weights, model, tmp_path / "work", "float32") == str(tmp_path / "work")
    assert (tmp_path / "work" / "model.safetensors").is_file()


def test_zero3_partitions_are_detected_and_need_deepspeed(tmp_path, tokenizer):
    """ZeRO-3 stand-in: real parameters given the two attributes DeepSpeed's partitioning sets on each (`ds_id`,
    `ds_status`); their data is left whole, nothing of DeepSpeed's gather is imitated. Without deepspeed the merge
    is refused before anything is gathered or written."""
    from trl_soft.engines.base import EngineWeights
    from trl_soft.engines.weights import export_merged_weights, model_sharding, needs_every_process, reload_folder

    model = _lora_llama(tokenizer)
    for index, parameter in enumerate(model.parameters()):
        parameter.ds_id, parameter.ds_status = index, "NOT_AVAILABLE"
    assert model_sharding(model.get_base_model()) == "zero3" and needs_every_process(model)
    weights = EngineWeights(base="base", kind="adapter", folder=str(tmp_path / "round_1"), tag="round_1")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ValueError, match="ZeRO-3 partitions, but `deepspeed` cannot be imported"):
            export_merged_weights(model, tmp_path / "work", torch.float32)
        with pytest.raises(ValueError, match="`deepspeed` cannot be imported"):
            reload_folder(weights, model, tmp_path / "work", "float32")
    else:  # with deepspeed, the main process alone must still not start a gather
        with pytest.raises(RuntimeError, match="every process must gather them"):
            reload_folder(weights, model, tmp_path / "work", "float32")
    assert not (tmp_path / "work").exists()
