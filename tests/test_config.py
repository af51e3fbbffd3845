import pytest
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


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_rounds", 0, "num_rounds"),
        ("prompts_per_round", 0, "prompts_per_round"),
        ("prompt_schedule", "sometimes", "prompt_schedule"),
        ("round_init", "random", "round_init"),
        ("exemplar_sampling", "diverse", "exemplar_sampling"),
        ("prompt_format", "xml", "prompt_format"),
        ("curriculum", "perplexityy", "curriculum"),
        ("num_exemplars", -1, "num_exemplars"),
        ("engraving_shots", 2, "engraving_shots"),
        ("generation_max_new_tokens", 0, "generation_max_new_tokens"),
        ("generation_temperature", -0.5, "generation_temperature"),
        ("generation_top_p", 0.0, "generation_top_p"),
        ("generation_batch_size", 0, "generation_batch_size"),
        ("filters", ["too_short", "profanity"], "filters"),
        ("filter_min_words", 0, "filter_min_words"),
        ("filter_max_exemplar_overlap", 1.5, "filter_max_exemplar_overlap"),
        ("curriculum_direction", "sideways", "curriculum_direction"),
        ("curriculum_bucket_size", 0, "curriculum_bucket_size"),
        ("curriculum_batch_size", 0, "curriculum_batch_size"),
        ("collapse_patience", 0, "collapse_patience"),
        ("collapse_threshold", -0.1, "collapse_threshold"),
        ("diagnostics_num_prompts", -1, "diagnostics_num_prompts"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path, field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_unknown_curriculum_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'length'"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="hardness")


def test_packing_with_curriculum_is_refused(tmp_path):
    with pytest.raises(ValueError, match="packing"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="length", packing=True)
    SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="none", packing=True)


def test_active_filters_default_to_all(tmp_path):
    from trl_soft.filters import FILTER_NAMES

    assert SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.filters.names == FILTER_NAMES
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", filters=[]).settings.filters.names == ()


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(ValueError, match="benchmarks.*mmlu"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", benchmarks=["hhh", "mmlu"])
    with pytest.raises(ValueError, match="benchmark_limit"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", benchmark_limit=0)


def test_column_curriculum_needs_its_column(tmp_path):
    with pytest.raises(ValueError, match="curriculum_column"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="column")


def test_collapse_metric_must_be_produced_by_some_round(tmp_path):
    with pytest.raises(ValueError, match="collapse_metric='truthfulqa_mc1'.*benchmarks"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="truthfulqa_mc1")
    with pytest.raises(ValueError, match="collapse_metric='validation_nll'"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", validation_path="none", collapse_metric="validation_nll")
    with pytest.raises(ValueError, match="collapse_metric='sample_entropy'"):
        SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="sample_entropy",
                   diagnostics_num_prompts=0)
    args = SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="hhh_overall", benchmarks=["hhh"])
    assert args.settings.collapse_metric == "hhh_overall" and args.settings.collapse_greater_is_better is True


def test_collapse_metric_defaults_to_validation_nll_when_there_is_a_validation_set(tmp_path):
    args = SOFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.settings.collapse_metric == "validation_nll" and args.settings.collapse_greater_is_better is False
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", validation_path="none").settings.collapse_metric is None
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="none").settings.collapse_metric is None
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="sample_self_bleu"
                      ).settings.collapse_greater_is_better is False
