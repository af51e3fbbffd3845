"""`trl_soft.engines.ranks`: colocated vLLM on every process (`vllm_colocate_ranks='all'`), each answering its slice.

The real test launches two processes (`accelerate launch --num_processes 2`, gloo on the CPU), each with its own vLLM
CPU engine (one core each) on a tiny random Llama shaped for vLLM's CPU attention (head size 32) with the real
SmolLM2 tokenizer, through the run's `EngineSession`: greedy and sampled answers on the starting weights, then a LoRA
"round" merged once by the main process and reloaded by both engines. The gathered answers must equal, token for
token, those of one engine answering the whole request alone (as the one engine of a 1-process run does), every rank
must hold all of them, and each engine must have answered only its slice (4 and 3 of 7 prompts per request).

What runs here and what does not: on a CPU each rank's engine is an independent engine in its own child processes
(vLLM's CPU worker would rebind the training process's threads); on CUDA the engines use vLLM's external_launcher
inside the training processes, one GPU each. That path, and tensor-parallel groups of ranks, are tested below only
through their arithmetic (which rank answers which slice, which cores and environment an engine gets): no GPU here.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from trl_soft.engines import EngineSettings, RankPlacement, vllm_installed

from .conftest import tiny_config
from .test_distributed import accelerate_launch

PROMPTS = 7  # tests/scripts/engines_per_rank.py: slices of 4 and 3
REQUESTS = ("start_greedy", "start_sampled", "round_1_greedy")


def placement(rank: int, processes: int, tp: int = 1, on_cuda: bool = False, local: int | None = None):
    local = processes if local is None else local
    return RankPlacement(rank, rank % local, processes, local, tp, on_cuda)


# ---- placement: no engine ----------------------------------------------------------------------------------------
def test_ranks_are_grouped_consecutively_by_tensor_parallel_size():
    groups = [placement(rank, 8, tp=2).group for rank in range(8)]
    assert groups == [0, 0, 1, 1, 2, 2, 3, 3] and placement(0, 8, tp=2).num_groups == 4
    # CUDA: every rank holds its share of its group's engine; CPU: the group's first rank holds all of it
    assert all(placement(rank, 8, tp=2, on_cuda=True).hosts_engine for rank in range(8))
    assert [placement(rank, 8, tp=2).hosts_engine for rank in range(4)] == [True, False, True, False]


def test_on_cuda_an_engine_joins_the_launchers_processes_on_its_own_gpu():
    p = placement(5, 8, on_cuda=True, local=4)
    assert p.engine_arguments() == {"distributed_executor_backend": "external_launcher"}
    # vLLM's external_launcher puts the worker on cuda:LOCAL_RANK, the GPU this rank trains on
    assert p.environment() == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}


def test_on_a_cpu_each_engine_is_bound_to_its_ranks_share_of_the_cores():
    assert placement(0, 8).engine_arguments() == {}
    cores = list(range(16))
    assert [placement(r, 4).cpu_binding(cores) for r in range(4)] == ["0-3", "4-7", "8-11", "12-15"]
    # a tensor-parallel group's engine: one share per worker, in vLLM's '|' format
    assert placement(2, 4, tp=2).cpu_binding(cores) == "8-11|12-15"
    assert placement(1, 2).cpu_binding([0, 1]) == "1"
    assert placement(1, 4).cpu_binding([0, 1]) is None  # fewer cores than processes: vLLM binds as it would


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        ("2", {"vllm_tensor_parallel_size": 3}),
        ("8", {"vllm_tensor_parallel_size": 3}),
        ("6", {"vllm_tensor_parallel_size": 4, "generation_backend": "auto"}),
    ],
)
def test_a_tensor_parallel_size_that_does_not_divide_the_processes_is_refused(tmp_path, monkeypatch, world, overrides):
    from trl_soft import SOFTConfig

    monkeypatch.setenv("WORLD_SIZE", world)  # as `accelerate launch` sets it; refused before any process group
    with pytest.raises(ValueError, match=rf"`vllm_tensor_parallel_size`.*must divide the number of processes \({world}\)"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", **{"generation_backend": "vllm", **overrides})


@pytest.mark.parametrize(
    ("world", "settings"),
    [
        ("8", dict(tensor_parallel_size=4)),
        ("2", dict(tensor_parallel_size=3, colocate_ranks="main")),  # one engine: its own tensor-parallel workers
        ("2", dict(tensor_parallel_size=3, vllm_mode="server")),
        ("2", dict(tensor_parallel_size=3, backend="hf")),
        ("1", dict(tensor_parallel_size=2)),  # one process: the engine's own workers
    ],
)
def test_other_tensor_parallel_sizes_are_accepted(monkeypatch, world, settings):
    monkeypatch.setenv("WORLD_SIZE", world)
    EngineSettings(**settings).check()


def test_per_rank_engines_are_the_default_for_colocated_vllm_under_several_processes(tmp_path):
    settings = tiny_config(tmp_path, generation_backend="vllm").settings.engine
    assert settings.colocate_ranks == "all" and settings.per_rank_engines(2) and not settings.per_rank_engines(1)
    assert not EngineSettings(colocate_ranks="main").per_rank_engines(8)
    assert not EngineSettings(backend="hf").per_rank_engines(8)


# ---- two real processes, two real vLLM CPU engines -------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_tiny(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama vLLM's CPU attention accepts (head size 32), saved with the real SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("vllm-tiny")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not vllm_installed() and not os.environ.get("CI"), reason="vLLM is not installed")
def test_two_processes_each_answer_their_slice_and_every_rank_gets_the_one_engine_answers(tmp_path, vllm_tiny,
                                                                                         smol_path):
    result = tmp_path / "result"
    accelerate_launch("engines_per_rank.py", str(tmp_path / "out"), str(result), str(vllm_tiny), smol_path,
                      processes=2)
    ranks = [json.loads(Path(f"{result}.rank{rank}.json").read_text()) for rank in range(2)]
    main, other = ranks
    assert [r["engine"] for r in ranks] == ["PerRankEngine", "PerRankEngine"] and main["processes"] == 2
    # every rank holds the same full, ordered answers, and they are the one engine's, token for token
    assert main["answers"] == other["answers"]
    for request in REQUESTS:
        assert len(main["answers"][request]) == PROMPTS
        assert main["answers"][request] == main["alone"][request], request
    # each engine answered only its slice of each of the three requests, on its own core
    assert [r["served"] for r in ranks] == [4 * len(REQUESTS), 3 * len(REQUESTS)]
    assert main["binding"] != other["binding"]
    # both engines generated round 1 with the merged round (merged once, into one file), not the start
    start, round_1 = main["answers"]["start_greedy"], main["answers"]["round_1_greedy"]
    assert any(a != b for a, b in zip(start[:4], round_1[:4])) and any(a != b for a, b in zip(start[4:], round_1[4:]))
    assert main["merged_files"] == ["engine_weights/model.safetensors"]
    # sampling follows each prompt's seed (run seed + index in the whole request), not the greedy path
    assert main["answers"]["start_sampled"] != start


# ---- failing together ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("wait", ["all_reduce", "store_wait"])
def test_an_engine_that_fails_on_one_rank_stops_every_rank_with_the_same_error(tmp_path, wait):
    """Process 1's engine fails to start while process 0's start waits for it (in a gloo all-reduce, or in a wait that
    never notices the other process is gone, as NCCL's does): both stop with the same error. A hang would be killed
    by `accelerate_launch_failing`'s timeout and fail the test."""
    import subprocess

    from .test_distributed import launch_command

    prefix = tmp_path / "start"
    result = subprocess.run(launch_command("engine_start_failure.py", str(prefix), "1", wait), capture_output=True,
                            text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    expected = ("The vLLM engine failed to start on process 1 of 2: RuntimeError: no room for the KV cache (made to "
                "fail on this process)")
    for rank in (0, 1):
        err = Path(f"{prefix}.rank{rank}.err").read_text()
        assert expected in err, err[-2000:]
    assert "(process 0 stops too)" in Path(f"{prefix}.rank0.err").read_text()  # seen while its start waited


def test_ranks_sharing_a_gpu_are_refused_and_one_gpu_per_process_is_placed_on_it():
    from trl_soft.engines.ranks import check_own_gpus

    check_own_gpus([("node0", "GPU-a"), ("node0", "GPU-b"), ("node1", "GPU-a")])  # one each: fine
    with pytest.raises(ValueError, match="Processes 0 and 2 train on the same GPU .*vllm_colocate_ranks='main'"):
        check_own_gpus([("node0", "GPU-a"), ("node0", "GPU-b"), ("node0", "GPU-a")])
    # CUDA_VISIBLE_DEVICES naming one GPU per process: local rank 3 sees one GPU, cuda:0, and its engine goes there
    one_each = RankPlacement(3, 3, 4, 4, 1, True, visible_devices=1)
    assert one_each.device_index == 0 and one_each.environment()["LOCAL_RANK"] == "0"
    assert RankPlacement(3, 3, 4, 4, 1, True, visible_devices=4).environment()["LOCAL_RANK"] == "3"
    assert "LOCAL_RANK" in RankPlacement.FORCED  # replaces the launcher's LOCAL_RANK for the engine only


def test_a_barrier_before_generating_where_trl_has_one():
    tp2 = RankPlacement(0, 0, 4, 4, 2, True, visible_devices=4)
    assert tp2.barrier_before_generate(lora=True)  # LoRA + tensor parallel on CUDA (huggingface/trl#3671)
    assert not tp2.barrier_before_generate(lora=False)
    assert not RankPlacement(0, 0, 4, 4, 1, True, visible_devices=4).barrier_before_generate(lora=True)
    assert not RankPlacement(0, 0, 4, 4, 2, False).barrier_before_generate(lora=True)
