"""`trl_soft.config`: `SOFTConfig`'s defaults, what it derives from them, and the command line and YAML that fill it.
Every impossible value, of every concern, is in the one table of tests/test_settings.py, with the fingerprint, the
metric names and the metric directions."""

import torch

from trl_soft import SOFTConfig


def test_defaults_follow_the_paper_and_train_in_bf16_only_where_the_hardware_computes_it(tmp_path):
    from trl_soft.engines.settings import cpu_has_fast_bfloat16

    args = SOFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.exemplar_sampling == "random"
    assert args.prompt_schedule == "disjoint"
    assert args.round_init == "previous"
    assert args.curriculum == "length"
    if not torch.cuda.is_available():
        assert args.bf16 is cpu_has_fast_bfloat16()


def test_explicit_bf16_is_respected(tmp_path):
    args = SOFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, fp16=False)
    assert args.bf16 is False


def test_packing_without_a_curriculum_or_the_prefix_rule_is_accepted(tmp_path):
    # (with either, it is refused: tests/test_settings.py)
    SOFTConfig(output_dir=str(tmp_path), report_to="none", curriculum="none", filter_truncation="cut", packing=True)


def test_active_filters_default_to_all(tmp_path):
    from trl_soft.filters import FILTER_NAMES

    assert SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.filters.names == FILTER_NAMES
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", filters=[]).settings.filters.names == ()


def test_collapse_metric_defaults_to_validation_nll_when_there_is_a_validation_set(tmp_path):
    # (which way each metric is better: tests/test_settings.py)
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.collapse_metric == "validation_nll"
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", validation_path="none").settings.collapse_metric is None
    assert SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric="none").settings.collapse_metric is None



def test_the_command_line_and_a_yaml_file_fill_the_settings(tmp_path):
    """The fields `SOFTConfig` gets from the concerns' settings reach `TrlParser` as the flat fields did: their types,
    defaults and help, flags and `--config` YAML values (the command line winning)."""
    from trl import TrlParser

    from trl_soft.config import CONCERNS
    from trl_soft.settings import config_settings

    parser = TrlParser((SOFTConfig,))
    actions = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)  # (a bool field that defaults to True also gets `--no_<name>`)
    for concern in CONCERNS.values():
        for entry in config_settings(concern):
            action = actions[entry.name]
            assert (action.default, action.help) == (entry.value, entry.help), entry.name
    assert (actions["num_rounds"].type, actions["collapse_noise_z"].type) == (int, float)
    assert actions["collapse_noise_z"].default == 1.96
    assert (actions["filters"].nargs, actions["filters"].type, actions["filters"].default) == ("+", str, None)
    assert (actions["vllm_server_devices"].nargs, actions["vllm_server_devices"].type) == ("+", int)
    assert actions["principle_gate_values"].default == ["harmful"]
    assert actions["behaviour_fewshot"].nargs == "+" and actions["behaviour_fewshot"].type is str

    yaml = tmp_path / "run.yaml"
    yaml.write_text("num_rounds: 4\nfilters: too_short\nprinciple_gate_values: [bad, worse]\ncollapse_noise_z: 2.5\n"
                    "report_to: none\n", encoding="utf-8")
    (config,) = parser.parse_args_and_config([
        "--config", str(yaml), "--output_dir", str(tmp_path / "out"), "--num_rounds", "2", "--behaviour_fewshot",
        "0", "2", "--vllm_server_devices", "2", "3", "--restore_best_round", "false", "--round_data", "accumulate",
    ])
    assert config.num_rounds == 2  # the command line wins over the file
    settings = config.settings
    assert settings.rounds.num_rounds == 2 and settings.rounds.data == "accumulate"
    assert settings.filters.names == ("too_short",) and settings.filters.gate_values == ("bad", "worse")
    assert settings.collapse.noise_z == 2.5 and settings.collapse.restore_best_round is False
    assert settings.behaviour.fewshot == (0, 2) and settings.engine.server_devices == (2, 3)
