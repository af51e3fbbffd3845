"""Real multi-process runs: `accelerate launch --num_processes 2 --cpu` (gloo), compared with one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"


def accelerate_launch(script: str, *args: str, processes: int = 2) -> None:
    launcher = Path(sys.executable).with_name("accelerate")
    # `--multi_gpu` selects accelerate's torchrun launcher; with no CUDA device the processes join over gloo on CPU.
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [str(launcher) if launcher.exists() else shutil.which("accelerate"), "launch", *mode,
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(SCRIPTS / script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_two_process_scoring_equals_one_process(tmp_path, smol_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    accelerate_launch("score_choices_distributed.py", str(one), smol_path, processes=1)
    accelerate_launch("score_choices_distributed.py", str(two), smol_path, processes=2)
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["processes"], double["processes"]) == (1, 2)
    assert [len(s) for s in double["choices"]] == [len(s) for s in single["choices"]]
    for a, b in zip(sum(single["choices"], []), sum(double["choices"], [])):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    assert double["completions"] == pytest.approx(single["completions"], rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_curriculum_order_is_identical_on_every_rank_and_global_batches_go_easy_to_hard(tmp_path, smol_path):
    from trl_soft.curriculum import curriculum_order

    result_path = tmp_path / "sampler.json"
    accelerate_launch("curriculum_sampler_distributed.py", str(result_path), smol_path, "4", processes=2)
    result = json.loads(result_path.read_text())
    assert result["processes"] == 2 and result["world_size"] == 2
    scores, ranks = result["scores"], sorted(result["ranks"], key=lambda r: r["rank"])
    expected = curriculum_order(scores, bucket_size=4, seed=result["seed"] + 1)
    assert ranks[0]["order"] == ranks[1]["order"] == expected
    # Step s trains on the union of every rank's s-th batch: those unions must go easy to hard.
    steps = [a + b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"])]
    assert sorted(i for step in steps for i in step) == list(range(len(scores)))
    assert all(len(step) == 4 for step in steps)
    for earlier, later in zip(steps, steps[1:]):
        assert max(scores[i] for i in earlier) <= min(scores[i] for i in later)
    assert set(ranks[0]["batches"][0]) != set(ranks[1]["batches"][0])  # the ranks really split each step
