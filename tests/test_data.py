import json

import pytest

from trl_soft.data import check_prompt_column, load_prompt_dataset, load_validation_set, split_rounds
from trl_soft.state import SOFTState, atomic_write_jsonl, read_jsonl

from .conftest import prompt_dataset


def test_disjoint_rounds_are_fresh_chunks():
    rounds = split_rounds(30, 3, None, "disjoint", seed=1)
    assert [len(r) for r in rounds] == [10, 10, 10]
    assert len(set().union(*map(set, rounds))) == 30
    assert rounds == split_rounds(30, 3, None, "disjoint", seed=1)
    assert rounds != split_rounds(30, 3, None, "disjoint", seed=2)
    assert [len(r) for r in split_rounds(30, 3, 4, "disjoint", seed=1)] == [4, 4, 4]


def test_reuse_rounds_repeat_the_same_prompts():
    rounds = split_rounds(30, 3, 5, "reuse", seed=1)
    assert rounds[0] == rounds[1] == rounds[2] and len(rounds[0]) == 5


def test_too_few_prompts_for_the_chunks():
    with pytest.raises(ValueError, match="prompts_per_round"):
        split_rounds(10, 3, 4, "disjoint", seed=1)


def test_prompt_column_checks():
    with pytest.raises(ValueError, match="prompt_column"):
        check_prompt_column(prompt_dataset(5, column="question"), "prompt", 2)
    with pytest.raises(ValueError, match="empty"):
        check_prompt_column(prompt_dataset(0), "prompt", 1)
    with pytest.raises(ValueError, match="fewer than `num_rounds`"):
        check_prompt_column(prompt_dataset(2), "prompt", 3)


def test_local_and_demo_prompt_datasets(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    assert load_prompt_dataset(str(path))["prompt"] == ["p0", "p1", "p2", "p3"]
    assert len(load_prompt_dataset("demo")) >= 300
    with pytest.raises(FileNotFoundError, match="prompts_dataset"):
        load_prompt_dataset(str(tmp_path / "missing.jsonl"))


def test_validation_set_loader(tmp_path):
    assert len(load_validation_set(None)) >= 40
    assert load_validation_set("none") == []
    bad = tmp_path / "v.jsonl"
    bad.write_text(json.dumps({"prompt": "Q?"}) + "\n")
    with pytest.raises(ValueError, match="reference"):
        load_validation_set(str(bad))


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


def test_shard_bounds_give_every_process_the_same_padded_size():
    from trl_soft.distributed import shard_bounds

    assert [shard_bounds(7, 2, r) for r in range(2)] == [(0, 4, 4), (4, 7, 4)]
    assert [shard_bounds(3, 4, r) for r in range(4)] == [(0, 1, 1), (1, 2, 1), (2, 3, 1), (3, 3, 1)]
    assert shard_bounds(0, 2, 1) == (0, 0, 0)
    for n in range(1, 12):
        for p in (1, 2, 3, 4):
            slices = [shard_bounds(n, p, r) for r in range(p)]
            assert sum(stop - start for start, stop, _ in slices) == n
            assert all(stop - start <= -(-n // p) for start, stop, _ in slices)
