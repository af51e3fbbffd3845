"""`CurriculumSampler`: the easy-to-hard order of a round's training data, as a `torch` sampler.

Why a sampler and not a pre-sorted dataset: the Trainer builds its DataLoader from a copy of the dataset pruned to
the model's input columns, and under `accelerate` it splits every global batch between the processes. A sampler that
computes the order from the difficulty scores alone (and a fixed seed) yields the same index sequence on every rank,
so the `BatchSamplerShard` that accelerate wraps around it hands out consecutive slices of one easy-to-hard sequence:
the global batch at step s is never harder than the one at step s + 1 (up to bucket shuffling).

The same order repeats every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from .curriculum import curriculum_order

DIFFICULTY_COLUMN = "difficulty"


class CurriculumSampler(Sampler[int]):
    """Yields dataset indices sorted by difficulty (ascending unless `descending`), optionally shuffled inside
    consecutive buckets of `bucket_size` indices with `seed`."""

    def __init__(
        self, scores: Sequence[float], descending: bool = False, bucket_size: int | None = None, seed: int = 0
    ):
        if bucket_size is not None and bucket_size < 1:
            raise ValueError(f"`bucket_size` must be >= 1 (or None for no shuffling); got {bucket_size}.")
        self.scores = [float(s) for s in scores]
        self.order = curriculum_order(self.scores, descending=descending, bucket_size=bucket_size, seed=seed)

    @classmethod
    def from_dataset(cls, dataset, column: str = DIFFICULTY_COLUMN, **kwargs) -> CurriculumSampler:
        """Read the scores from a dataset column (the round dataset the trainer holds, before column pruning)."""
        names = getattr(dataset, "column_names", None) or []
        if column not in names:
            raise ValueError(
                f"CurriculumSampler: the dataset has no {column!r} column (columns: {names}). Score the examples "
                "first, or turn the curriculum off with `curriculum='none'`."
            )
        return cls(dataset[column], **kwargs)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
