import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "docs/make_config_reference.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/configuration.md is stale: run `python docs/make_config_reference.py`"


def test_example_help_lists_soft_options_with_their_help():
    result = subprocess.run(
        [sys.executable, "examples/soft_llama.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    text = " ".join(result.stdout.split())
    for flag in ("--num_rounds", "--exemplar_sampling", "--curriculum", "--prompts_dataset", "--use_peft",
                 "--load_in_4bit", "--resume", "--round_init"):
        assert flag in text, flag
    assert "Number of bootstrapping rounds" in text
    assert "the single-round Self-Align baseline" in text


def test_cli_usage_and_report(tmp_path):
    from trl_soft.cli import main
    from trl_soft.state import SOFTState

    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    state = SOFTState(config_hash="x", num_rounds=2)
    state.record_round({"round": 1, "prompts": 4, "kept": 3, "validation_nll": 2.5})
    state.save(tmp_path)
    assert main(["report", str(tmp_path)]) == 0


def test_report_prints_the_stop_and_plots_the_rounds(tmp_path, capsys):
    from trl_soft.cli import main
    from trl_soft.state import SOFTState

    state = SOFTState(config_hash="x", num_rounds=4, base_metrics={"round": 0, "validation_nll": 2.6,
                                                                   "sample_entropy": 2.0})
    for round_index, nll in ((1, 2.5), (2, 2.4), (3, 2.45)):
        state.record_round({"round": round_index, "prompts": 4, "kept": 3, "validation_nll": nll,
                            "sample_entropy": 2.0 - round_index / 10, "sample_distinct_2": 0.5})
    state.stopped_early, state.stop_reason, state.final_round = True, "validation_nll got worse", 2
    state.save(tmp_path)
    image = tmp_path / "rounds.png"
    assert main(["report", str(tmp_path), "--plot", str(image)]) == 0
    out = capsys.readouterr().out
    assert "Stopped early after round 3 of 4: validation_nll got worse. Final model: round 2." in out
    assert "entropy" in out and "distinct-2" in out
    assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accelerate_configs_are_valid_and_say_how_to_launch():
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    folder = Path(__file__).resolve().parents[1] / "examples" / "accelerate_configs"
    expected = {"single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp2", "cpu_2proc"}
    assert {p.stem for p in folder.glob("*.yaml")} == expected
    for path in folder.glob("*.yaml"):
        config = ClusterConfig.from_yaml_file(str(path))  # rejects unknown keys
        assert f"--config_file examples/accelerate_configs/{path.name}" in path.read_text(), path.name
        if path.stem.startswith("deepspeed"):
            assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    assert ClusterConfig.from_yaml_file(str(folder / "cpu_2proc.yaml")).num_processes == 2
    assert ClusterConfig.from_yaml_file(str(folder / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2


def test_a_stop_at_the_last_round_is_not_called_early():
    from trl_soft.reporting import format_stop_line
    from trl_soft.state import SOFTState

    state = SOFTState(config_hash="x", num_rounds=3, rounds_completed=3, stopped_early=True,
                      stop_reason="validation_nll got worse", final_round=2)
    assert format_stop_line(state) == (
        "The last round (3) was not kept: validation_nll got worse. Final model: round 2."
    )
    assert format_stop_line(SOFTState(config_hash="x", num_rounds=3, rounds_completed=3)) == ""
