"""Colocated vLLM on every process (`vllm_colocate_ranks='all'`, the default under several processes).

Generation is most of a SOFT round, and with one engine in the main process the other processes' accelerators idle
for all of it. Here every process answers its own contiguous slice of each request and the answers are gathered back
in order (`distributed.map_by_group`), so every process ends with the same full, ordered list, as with one engine.

Where each engine sits (`RankPlacement`):
- CUDA: one engine per rank, run inside the training process with vLLM's `distributed_executor_backend=
  'external_launcher'`, which takes the launcher's process group and environment (RANK, LOCAL_RANK, WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT) and puts the rank's worker on `cuda:LOCAL_RANK`, the GPU the rank trains on. With
  `vllm_tensor_parallel_size` t > 1, vLLM groups consecutive ranks by t (as TRL's GRPO colocate mode does): the t
  ranks of a group each hold a shard of one engine, send it the same slice and get the same answers. Written against
  vLLM's documented API (`vllm.v1.executor.uniproc_executor.ExecutorWithExternalLauncher`); not run here.
- CPU: vLLM's CPU worker binds OpenMP threads and replaces `torch.set_num_threads` in the process it runs in, which
  must not be the training process; so each rank (the first of each group when t > 1) starts an independent engine in
  its own child processes, as one process does, its threads bound to that rank's share of the cores
  (`VLLM_CPU_OMP_THREADS_BIND`, unless the user set it).

Answers do not depend on the number of processes: each prompt is sampled with its own seed from the request's seed
(the run seed plus the round) and its index in the whole request (`base.prompt_seed`), not in the slice.

Failing together: on CUDA an engine's start is itself a collective (external_launcher's workers all-reduce the memory
they found), so a rank whose engine fails to start would leave the others waiting inside vLLM for ever, and the
failing rank would wait for them at the next gather. `start_together` publishes a failure through the launcher's
key-value store (the TCPStore at MASTER_ADDR:MASTER_PORT, a channel beside the process group) and every other rank
watches it while its own engine starts: every process stops with the same `EngineStartError` within a few poll
intervals (a rank blocked inside a collective prints it and exits, as it cannot raise there).

GPUs: the engine runs on the GPU accelerate put the rank on (local rank modulo the GPUs the process sees), so a
launcher that gives each process one GPU through `CUDA_VISIBLE_DEVICES` works (vLLM would otherwise put rank k on
`cuda:k`, which that process does not have); two ranks on one GPU (each would start an engine there) are refused with
the fix. With LoRA and `vllm_tensor_parallel_size` > 1 every rank passes a barrier before generating, as TRL does
(its vllm_generation.py, huggingface/trl#3671: vLLM's tensor-parallel collectives raced NCCL's clean-up of the small
LoRA all-reduce and hung on GPUs without NVLink).

Weights: every engine loads each round's weights from the saved round folder itself (full weights or the adapter;
the output folder must be visible to every process, as for a multi-node checkpoint). A LoRA round that CPU engines
take merged is merged once, by the main process, into `output_dir/engine_weights/`; the others wait for it and
reload the same file: no two processes write one file, and the disk holds one merged copy, not one per rank.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from ..distributed import is_main_process, map_by_group, process_state, run_everywhere, run_on_main
from ..errors import EngineStartError
from ..generation import GenerationResult, GenerationSettings
from .base import EngineWeights, GenerationEngine
from .choice import EngineChoice
from .weights import reload_folder

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How often a rank looks for another's failure while its engine starts, how long a failing rank waits for the others
# to have read it before it raises (bounded: they may be gone), and how long a rank blocked inside a collective gives
# its start to return on its own before it exits.
POLL_SECONDS = 0.5
ACK_SECONDS = 30.0
GRACE_SECONDS = 5.0
EXIT_CODE = 1
_attempts = itertools.count()  # every process starts its engines in the same order: one key space per start


@dataclass(frozen=True)
class RankPlacement:
    """This process's place among the engines: which group (slice) it answers and what its engine needs."""

    process_index: int
    local_process_index: int
    num_processes: int
    local_processes: int
    tensor_parallel_size: int
    on_cuda: bool
    visible_devices: int = 0  # GPUs this process sees (0: not read, CPU)

    @classmethod
    def here(cls, tensor_parallel_size: int, on_cuda: bool) -> RankPlacement:
        state = process_state()
        if state.num_processes % tensor_parallel_size:
            # EngineSettings.check refuses this at configuration time; a process group built otherwise ends here.
            raise ValueError(
                f"`vllm_tensor_parallel_size` ({tensor_parallel_size}) must divide the number of processes "
                f"({state.num_processes}) with `vllm_colocate_ranks='all'`."
            )
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or state.num_processes
        visible = 0
        if on_cuda:
            visible = torch.cuda.device_count()
        return cls(state.process_index, state.local_process_index, state.num_processes, local,
                   tensor_parallel_size, on_cuda, visible)

    @property
    def device_index(self) -> int:
        """The GPU (among those this process sees) the rank trains on, as accelerate places it: its local rank
        modulo the visible GPUs. With one GPU per process (`CUDA_VISIBLE_DEVICES` set per process) that is 0."""
        return self.local_process_index % self.visible_devices if self.visible_devices else self.local_process_index

    def barrier_before_generate(self, lora: bool) -> bool:
        """Where TRL puts a barrier before generating: LoRA with tensor-parallel engines on CUDA."""
        return self.on_cuda and lora and self.tensor_parallel_size > 1

    @property
    def group(self) -> int:
        """The slice this process answers: ranks are grouped by `tensor_parallel_size`, consecutively."""
        return self.process_index // self.tensor_parallel_size

    @property
    def num_groups(self) -> int:
        return self.num_processes // self.tensor_parallel_size

    @property
    def hosts_engine(self) -> bool:
        """On CUDA every rank holds its share of its group's engine; on a CPU the group's first rank holds all of it."""
        return self.on_cuda or self.process_index % self.tensor_parallel_size == 0

    FORCED = frozenset({"LOCAL_RANK"})  # set for the engine even where the launcher set it

    def engine_arguments(self) -> dict[str, object]:
        """`vllm.LLM` arguments: on CUDA, the launcher's processes are the engine's workers."""
        return {"distributed_executor_backend": "external_launcher"} if self.on_cuda else {}

    def environment(self) -> dict[str, str]:
        """What the engine reads from the environment when it starts (the caller keeps the user's own values)."""
        if self.on_cuda:
            # external_launcher reads these (torchrun sets them; other launchers may not).
            # LOCAL_RANK is the engine's GPU: with one visible GPU per process, 0 (vLLM asserts LOCAL_RANK < the
            # visible GPUs and puts the worker on cuda:LOCAL_RANK); `FORCED` lets it replace the launcher's value.
            return {"RANK": str(self.process_index), "LOCAL_RANK": str(self.device_index),
                    "WORLD_SIZE": str(self.num_processes)}
        binding = self.cpu_binding(sorted(os.sched_getaffinity(0)))
        return {"VLLM_CPU_OMP_THREADS_BIND": binding} if binding else {}

    def cpu_binding(self, cores: Sequence[int]) -> str | None:
        """This machine's cores split evenly among its processes; the engine of a group gets its ranks' shares, one
        per tensor-parallel worker ('|'-separated, vLLM's format). None when there are fewer cores than processes
        (vLLM's own binding then)."""
        share = len(cores) // self.local_processes
        if share < 1:
            return None
        first_local = self.local_process_index - self.process_index % self.tensor_parallel_size
        parts = []
        for local in range(first_local, first_local + self.tensor_parallel_size):
            chunk = cores[local * share:(local + 1) * share]
            parts.append(f"{chunk[0]}-{chunk[-1]}" if len(chunk) > 1 else str(chunk[0]))
        return "|".join(parts)


class PerRankEngine:
    """Every process's own engine (or its group's); every process calls it and gets the same, full answers."""

    def __init__(self, start: Callable[[], GenerationEngine], placement: RankPlacement, choice: EngineChoice,
                 work_dir: Path):
        self.placement, self.choice, self.work_dir = placement, choice, Path(work_dir)
        self.engine: GenerationEngine | None = None
        self.current = EngineWeights(base=choice.base or "")
        self.served = 0  # prompts this process's engine answered (its slices), for the logs and the tests

        if placement.on_cuda:
            check_own_gpus(run_everywhere(lambda: gpu_identity(placement.device_index)))

        def launch() -> tuple[str, float]:
            if placement.hosts_engine:
                self.engine = start()
                return self.engine.name, float(getattr(self.engine, "start_seconds", 0.0))
            return "", 0.0

        mine = start_together(launch)  # a failure on any process stops every process, with the same error
        started = run_everywhere(lambda: mine)  # every process has left its start: a gather cannot hang
        self.name = next(name for name, _ in started if name)
        self.start_seconds = max(seconds for _, seconds in started)

    def describe(self) -> str:
        p = self.placement
        where = "one per GPU, external_launcher" if p.on_cuda else "one per CPU process"
        parallel = f", tensor-parallel groups of {p.tensor_parallel_size}" if p.tensor_parallel_size > 1 else ""
        return f"{self.name} on {p.num_processes} processes ({p.num_groups} slices, {where}{parallel})"

    def load(self, weights: EngineWeights, model=None) -> float:
        if weights == self.current:
            return 0.0
        started = time.perf_counter()
        target = weights
        if weights.kind == "adapter" and self.choice.lora_mode != "adapter":
            # Merged once by the main process into the shared work folder; the others wait for its path.
            folder = run_on_main(lambda: reload_folder(weights, model, self.work_dir, self.choice.dtype))
            target = EngineWeights(base=weights.base, kind="full", folder=str(folder), tag=weights.tag)
        run_everywhere(lambda: self.engine.load(target, model) if self.engine is not None else 0.0)
        self.current = weights
        return time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        main = is_main_process()

        def answer(shard: list[str], first_index: int) -> list[GenerationResult]:
            if self.engine is None or not shard:
                return []
            self.served += len(shard)
            return self.engine.generate(  # type: ignore[call-arg]
                shard, settings, desc if main else None, first_index=first_index
            )

        if self.placement.barrier_before_generate(self.choice.lora_mode is not None):
            torch.distributed.barrier(device_ids=[self.placement.device_index])
        return map_by_group(prompts, answer, self.placement.tensor_parallel_size)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()


# ---- one GPU per rank -------------------------------------------------------------------------------------------------
def gpu_identity(device_index: int) -> tuple[str, str]:
    """(host, GPU UUID) of the GPU this rank trains on."""
    uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    return socket.gethostname(), str(uuid) if uuid is not None else f"{os.environ.get('CUDA_VISIBLE_DEVICES')}:{device_index}"


def check_own_gpus(identities: Sequence[tuple[str, str]]) -> None:
    """Every rank must have a GPU of its own for its engine (each takes a share of it): refuse ranks that share one."""
    seen: dict[tuple[str, str], int] = {}
    for rank, identity in enumerate(identities):
        if identity in seen:
            raise ValueError(
                f"Processes {seen[identity]} and {rank} train on the same GPU ({identity[1]} on {identity[0]}), and with "
                "`vllm_colocate_ranks='all'` each would start its own vLLM engine there. Launch one process per GPU "
                "(with `CUDA_VISIBLE_DEVICES` naming a different GPU for each process, or all GPUs visible to every "
                "process), or set `vllm_colocate_ranks='main'` for one engine in the main process."
            )
        seen[identity] = rank


# ---- starting together --------------------------------------------------------------------------------------------------
def store_client(prefix: str):
    """A client of the launcher's key-value store (torchrun's TCPStore at MASTER_ADDR:MASTER_PORT), its keys under
    `prefix`; None where there is none to reach."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or not dist.is_available():
        return None
    try:
        store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=30), wait_for_workers=False)
    except (RuntimeError, ValueError):
        return None
    return dist.PrefixStore(prefix, store)


class _Watch(threading.Thread):
    """While this rank's engine starts: another rank's failure, once published, is printed here too. If the start does
    not return within `GRACE_SECONDS` of it (blocked in a collective the failed rank never joins), the process exits:
    no Python code can raise inside that wait."""

    def __init__(self, store, rank: int):
        super().__init__(daemon=True, name="trl-soft-engine-start-watch")
        self.store, self.rank = store, rank
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            if self.store.check(["failed"]):
                # Said before the failed process is told it was read: the launcher may stop this one when it exits.
                logger.error(f"{self.store.get('failed').decode()} (process {self.rank} stops too)")
                for handler in logging.getLogger().handlers + logging.getLogger("trl_soft").handlers:
                    handler.flush()
                self.store.add("seen", 1)
                if not self.done.wait(GRACE_SECONDS):  # still inside the start, waiting for the failed process
                    os._exit(EXIT_CODE)
                return  # the start returned or raised: the main thread raises the same error


def start_together(start: Callable[[], T], ack_seconds: float = ACK_SECONDS) -> T:
    """`start()` on every process, for engines whose start may wait on the other processes. When it fails on any
    process, every process raises (or, blocked in a collective, prints and exits with) the same `EngineStartError`:
    the first failure, published in the launcher's store. Without a store to reach, a plain call."""
    state = process_state()
    if state.num_processes == 1:
        return start()
    prefix = f"trl-soft/engine-start/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_attempts)}"
    store, watched = store_client(prefix), store_client(prefix)  # one client per thread
    if store is None or watched is None:
        return start()
    rank, others = state.process_index, state.num_processes - 1
    watch = _Watch(watched, rank)
    watch.start()
    try:
        result = start()
    except Exception as err:
        watch.done.set()
        mine = f"The vLLM engine failed to start on process {rank} of {state.num_processes}: {type(err).__name__}: {err}"
        message = store.compare_set("failed", "", mine).decode()  # the first failure wins, on every process
        if message == mine:  # this process failed first: the others stop once they have read it (a bounded wait)
            deadline = time.monotonic() + ack_seconds
            while store.add("seen", 0) < others and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS / 5)
        else:
            store.add("seen", 1)
        raise EngineStartError(message) from err
    watch.done.set()
    # This start is done; another process's may still fail: wait until every process has started, or one failed.
    store.add("started", 1)
    while store.add("started", 0) < state.num_processes:
        if store.check(["failed"]):
            store.add("seen", 1)
            raise EngineStartError(store.get("failed").decode())
        time.sleep(POLL_SECONDS)
    return result
