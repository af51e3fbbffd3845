"""examples/: the training script's `--help` (built from `SOFTConfig` and trl_soft/scripts/train.py) and the
accelerate configs, each valid and saying how to launch with it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_accelerate_configs_are_valid_and_say_how_to_launch():
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
