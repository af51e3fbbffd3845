"""`trl_soft.state`: the manifest and atomic writes, and the run folder checks made before any model loads."""

import pytest

from trl_soft import SOFTTrainer
from trl_soft.state import SOFTState, atomic_write_jsonl, read_jsonl

from .conftest import UNLOADABLE, prompt_dataset, tiny_config, unloaded_trainer


def test_manifest_round_trip_and_atomic_writes(tmp_path):
    state = SOFTState(config_hash="abc", num_rounds=3)
    state.record_round({"round": 1, "kept": 5})
    state.record_round({"round": 1, "kept": 6})  # a redone round replaces its record
    state.save(tmp_path)
    loaded = SOFTState.load(tmp_path)
    assert loaded.rounds_completed == 1 and loaded.history == [{"round": 1, "kept": 6}]
    atomic_write_jsonl(tmp_path / "g.jsonl", [{"a": 1}, {"a": 2}])
    assert read_jsonl(tmp_path / "g.jsonl") == [{"a": 1}, {"a": 2}]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="output_dir"):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(blocker / "out"), train_dataset=prompt_dataset(12))


def test_existing_run_from_a_different_config(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    SOFTState(config_hash="from-another-config", num_rounds=2, rounds_completed=1).save(out)
    with pytest.raises(ValueError, match="different settings.*overwrite_output_dir"):
        unloaded_trainer(tmp_path)
