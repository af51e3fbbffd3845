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

Weights: every engine loads each round's weights from the saved round folder itself (full weights or the adapter;
the output folder must be visible to every process, as for a multi-node checkpoint). A LoRA round that CPU engines
take merged is merged once, by the main process, into `output_dir/engine_weights/`; the others wait for it and
reload the same file: no two processes write one file, and the disk holds one merged copy, not one per rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..distributed import is_main_process, map_by_group, process_state, run_everywhere, run_on_main
from ..generation import GenerationResult, GenerationSettings
from .base import EngineWeights, GenerationEngine
from .choice import EngineChoice
from .weights import reload_folder


@dataclass(frozen=True)
class RankPlacement:
    """This process's place among the engines: which group (slice) it answers and what its engine needs."""

    process_index: int
    local_process_index: int
    num_processes: int
    local_processes: int
    tensor_parallel_size: int
    on_cuda: bool

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
        return cls(state.process_index, state.local_process_index, state.num_processes, local,
                   tensor_parallel_size, on_cuda)

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

    def engine_arguments(self) -> dict[str, object]:
        """`vllm.LLM` arguments: on CUDA, the launcher's processes are the engine's workers."""
        return {"distributed_executor_backend": "external_launcher"} if self.on_cuda else {}

    def environment(self) -> dict[str, str]:
        """What the engine reads from the environment when it starts (the caller keeps the user's own values)."""
        if self.on_cuda:
            # external_launcher reads these (torchrun sets them; other launchers may not).
            return {"RANK": str(self.process_index), "LOCAL_RANK": str(self.local_process_index),
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

        def launch() -> tuple[str, float]:
            if placement.hosts_engine:
                self.engine = start()
                return self.engine.name, float(getattr(self.engine, "start_seconds", 0.0))
            return "", 0.0

        started = run_everywhere(launch)  # a failure on any process stops every process here
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

        return map_by_group(prompts, answer, self.placement.tensor_parallel_size)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
