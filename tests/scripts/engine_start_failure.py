"""Run under `accelerate launch --num_processes 2` (gloo on the CPU): every process builds a `PerRankEngine` whose
start fails on process argv[2] and, on the other, waits for the failed process the way a vLLM engine's start does on
CUDA (external_launcher's executor all-reduces the memory it found over the ranks): argv[3] 'all_reduce' waits in a
gloo all-reduce (which errors once the failed process has exited), 'store_wait' in a wait that never notices it (as
NCCL does not). Each process's stderr goes to argv[1] + f".rank{rank}.err"; the test reads both."""

import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl_soft.distributed import process_state  # noqa: E402
from trl_soft.engines import PerRankEngine, RankPlacement  # noqa: E402
from trl_soft.engines.choice import EngineChoice  # noqa: E402

FAILURE = "no room for the KV cache (made to fail on this process)"


def main(prefix: str, failing: int, wait: str) -> None:
    state = process_state()
    err = os.open(f"{prefix}.rank{state.process_index}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 2)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)  # as a program that shows the library's lines does

    def start():
        if state.process_index == failing:
            print(f"failing at {time.time():.3f}", file=sys.stderr, flush=True)  # for the record (docs/scaling.md)
            raise RuntimeError(FAILURE)
        if wait == "all_reduce":
            dist.all_reduce(torch.zeros(1))  # the failed process never joins
        else:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=600), wait_for_workers=False)
            store.wait(["a key nobody sets"])
        raise AssertionError("the failed process joined a collective it never reaches")

    choice = EngineChoice("vllm", "test", mode="colocate", dtype="float32")
    PerRankEngine(start, RankPlacement.here(1, on_cuda=False), choice, Path(prefix).parent / "engine_weights")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
