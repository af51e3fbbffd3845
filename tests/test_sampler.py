"""`trl_soft.sampler`: `CurriculumSampler` yields the order of the scores, every epoch (on several ranks:
tests/test_distributed.py)."""

import pytest

from trl_soft.sampler import CurriculumSampler


def test_curriculum_sampler_yields_the_order_of_the_scores():
    sampler = CurriculumSampler.from_scores([0.7, 0.1, 0.4])
    assert list(sampler) == [1, 2, 0] and len(sampler) == 3
    assert list(CurriculumSampler.from_scores([0.7, 0.1, 0.4], descending=True)) == [0, 2, 1]
    assert list(CurriculumSampler([2, 0, 1])) == list(CurriculumSampler([2, 0, 1])) == [2, 0, 1]  # every epoch
    with pytest.raises(ValueError, match="bucket_size"):
        CurriculumSampler.from_scores([0.1], bucket_size=0)
