"""`CurriculumSampler`: a round's training order, as a `torch` sampler.

The order is computed once per round from the difficulty scores (`CurriculumSettings.rank`), kept in the `Round`
record, and handed to the Trainer through this sampler. Why a sampler and not a pre-sorted dataset: under
`accelerate`, the `BatchSamplerShard` wrapped around it hands out consecutive slices of one easy-to-hard sequence, the
same on every rank, so the global batch at step s is never harder than the one at step s + 1 (up to bucket
shuffling). The same order repeats every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from .curriculum import curriculum_order


class CurriculumSampler(Sampler[int]):
    """Yields the dataset indices of `order`, every epoch."""

    def __init__(self, order: Sequence[int]):
        self.order = [int(i) for i in order]

    @classmethod
    def from_scores(
        cls, scores: Sequence[float], descending: bool = False, bucket_size: int | None = None, seed: int = 0
    ) -> CurriculumSampler:
        """Easy to hard by `scores` (see `curriculum_order`)."""
        if bucket_size is not None and bucket_size < 1:
            raise ValueError(f"`bucket_size` must be >= 1 (or None for no shuffling); got {bucket_size}.")
        return cls(curriculum_order(scores, descending=descending, bucket_size=bucket_size, seed=seed))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
