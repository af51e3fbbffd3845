"""Many requests in flight at once: the vLLM server client and the endpoint judge both send one HTTP request per item
and let the server batch them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from .progress import bar as phase_bar  # inside a phase: its one bar

R = TypeVar("R")


def map_in_flight(
    fn: Callable[[int], R], count: int, max_in_flight: int, desc: str, unit: str, progress: bool = True
) -> list[R]:
    """`[fn(0), ..., fn(count - 1)]` with up to `max_in_flight` calls running at once, in order, with a progress bar.
    The first failure cancels the calls not yet started and is raised."""
    if count == 0:
        return []
    results: list[R | None] = [None] * count
    with ThreadPoolExecutor(max_workers=min(max_in_flight, count)) as pool, phase_bar(
        total=count, desc=desc, unit=unit, disable=not progress
    ) as bar:
        futures = {pool.submit(fn, i): i for i in range(count)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results  # type: ignore[return-value]
