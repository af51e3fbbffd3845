"""Shard a list of work items across processes and gather the results back in order.

With one process this is a plain function call. With several (under `accelerate launch`), each process takes a
contiguous slice of ceil(N / P) items (the last slices shorter), and `gather_object` brings every process's results
to all of them, so every rank ends up with the same full, ordered list.

A short slice is padded with repeats of its last item (whose results are dropped), so that every process makes the
same calls: under FSDP and DeepSpeed ZeRO-3 every forward pass is a collective, and a process with one batch fewer
would leave the others waiting forever. The cost is at most one extra item per process.

`map_by_group` is the unpadded variant for work that is no collective across processes (each rank's own vLLM
engine): groups of ranks (a tensor-parallel group sharing one engine) answer one contiguous slice each, and the
first rank of each group hands in its results. `run_everywhere` runs a step on every process and raises on every
process when it failed on any, so that no process waits forever at the next collective for one that has died.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

T = TypeVar("T")
R = TypeVar("R")


def process_state() -> PartialState:
    """accelerate's process state. Under `accelerate launch` on a machine without CUDA it must be created with
    `cpu=True`, or accelerate sees no backend and treats every process as alone (the Trainer does this itself; a
    script that only generates or scores must too)."""
    if not PartialState._shared_state:
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        return PartialState(cpu=launched and not torch.cuda.is_available())
    return PartialState()


def shard_bounds(num_items: int, num_processes: int, process_index: int) -> tuple[int, int, int]:
    """(start, stop, padded size) of a process's contiguous slice; every process's padded size is the same."""
    per_process = math.ceil(num_items / num_processes) if num_items else 0
    start = min(process_index * per_process, num_items)
    return start, min(start + per_process, num_items), per_process


def even_slices(count: int, parts: int) -> list[range]:
    """`count` indices in `parts` contiguous slices, as equal as possible (the first ones one longer): for work that is
    not a collective, so slices need no padding (one engine per rank group, several servers)."""
    size, extra = divmod(count, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def map_sharded(items: Sequence[T], fn: Callable[[list[T]], list[R]]) -> list[R]:
    """`fn(items)`, computed slice by slice on every process; the same ordered result on every rank."""
    state = process_state()
    if state.num_processes == 1:
        return list(fn(list(items)))
    if not items:
        return []
    start, stop, padded = shard_bounds(len(items), state.num_processes, state.process_index)
    shard = list(items[start:stop])
    filler = shard[-1] if shard else items[-1]
    results = list(fn(shard + [filler] * (padded - len(shard))))[: len(shard)]
    gathered = gather_object([results])  # one list per process, in rank order
    return [result for part in gathered for result in part]


def run_everywhere(fn: Callable[[], R]) -> list[R]:
    """`fn()` on every process; every process gets every process's result, in rank order. An exception on any
    process is raised on every process (the failing one raises its own)."""
    state = process_state()
    if state.num_processes == 1:
        return [fn()]
    failure: Exception | None = None
    try:
        outcome: tuple[str, object] = ("ok", fn())
    except Exception as err:  # the others get its text, this process raises it below
        failure, outcome = err, ("error", f"{type(err).__name__}: {err}")
    outcomes = gather_object([outcome])
    if failure is not None:
        raise failure
    errors = [f"process {rank}: {value}" for rank, (status, value) in enumerate(outcomes) if status == "error"]
    if errors:
        raise RuntimeError("Another process failed: " + "; ".join(errors))
    return [value for _, value in outcomes]  # type: ignore[misc]


def map_by_group(items: Sequence[T], fn: Callable[[list[T], int], list[R]], group_size: int = 1) -> list[R]:
    """`fn(slice, first_index)` on every process, for the contiguous slice of `items` its group answers (groups of
    `group_size` consecutive ranks, which must divide the number of processes; `first_index` is the slice's position
    in `items`); the same ordered results on every rank. Unpadded: slices differ by at most one item, so `fn` must not
    be a collective across groups. The ranks of a group compute the same slice; its first rank's results are kept."""
    state = process_state()
    if state.num_processes == 1:
        return list(fn(list(items), 0))
    if state.num_processes % group_size:
        raise ValueError(f"Groups of {group_size} ranks do not divide {state.num_processes} processes.")
    group, member = divmod(state.process_index, group_size)
    share = even_slices(len(items), state.num_processes // group_size)[group]
    start, stop = share.start, share.stop

    def answer() -> list[R]:
        results = list(fn(list(items[start:stop]), start))
        if member == 0 and len(results) != stop - start:
            raise RuntimeError(f"{len(results)} results for {stop - start} items (items {start} to {stop - 1}).")
        return results if member == 0 else []

    return [result for part in run_everywhere(answer) for result in part]


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


def run_on_main(fn: Callable[[], R]) -> R:
    """`fn()` on the main process only; every process returns its result. An exception on the main process is raised
    on every process (so none waits forever for a result that will not come)."""
    state = process_state()
    if state.num_processes == 1:
        return fn()

    payload: list[object] = [None]
    failure: Exception | None = None
    if state.is_main_process:
        try:
            payload[0] = ("ok", fn())
        except Exception as err:  # the other processes get its text, the main process raises it below
            failure = err
            payload[0] = ("error", f"{type(err).__name__}: {err}")
    broadcast_object_list(payload, from_process=0)
    status, value = payload[0]  # type: ignore[misc]
    if failure is not None:
        raise failure
    if status == "error":
        raise RuntimeError(f"The main process failed: {value}")
    return value  # type: ignore[return-value]
