"""`trl_soft.config`: `SOFTConfig`'s defaults and what it derives from them. Every impossible value, of every concern,
is in the one table of tests/test_settings.py, with the fingerprint, the metric names and the metric directions."""

import torch

from trl_soft import SOFTConfig


def test_defaults_follow_the_paper_and_train_in_float32_on_cpu(tmp_path):
    args = SOFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.exemplar_sampling == "random"
    assert args.prompt_schedule == "disjoint"
    assert args.round_init == "previous"
    assert args.curriculum == "length"
    if not torch.cuda.is_available():
        assert args.bf16 is False


def test_explicit_bf16_is_respected(tmp_path):
    args = SOFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, fp16=False)
    assert args.bf16 is False


def test_packing_without_a_curriculum_is_accepted(tmp_path):
    # (with one, it is refused: tests/test_settings.py)
    SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="none", packing=True)


def test_active_filters_default_to_all(tmp_path):
    from trl_soft.filters import FILTER_NAMES

    assert SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.filters.names == FILTER_NAMES
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", filters=[]).settings.filters.names == ()


def test_collapse_metric_defaults_to_validation_nll_when_there_is_a_validation_set(tmp_path):
    # (which way each metric is better: tests/test_settings.py)
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.collapse_metric == "validation_nll"
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", validation_path="none").settings.collapse_metric is None
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="none").settings.collapse_metric is None

