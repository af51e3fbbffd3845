"""`trl_soft.data`: the round schedules, the prompt and validation loaders. (Unusable prompt sets and files, refused
before a model loads: tests/test_bad_inputs.py.)"""

import json

import pytest

from trl_soft.data import ValidationPair, load_prompt_dataset, load_validation_set, split_rounds


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


def test_local_and_demo_prompt_datasets(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    assert load_prompt_dataset(str(path))["prompt"] == ["p0", "p1", "p2", "p3"]
    assert len(load_prompt_dataset("demo")) >= 300
    array = tmp_path / "p.json"  # a .json file may also be one list of objects; a UTF-8 byte-order mark is fine
    array.write_text("\ufeff" + json.dumps([{"prompt": "a"}, {"prompt": "b"}]), encoding="utf-8")
    assert load_prompt_dataset(str(array))["prompt"] == ["a", "b"]


def test_validation_set_loader(tmp_path):
    assert len(load_validation_set(None)) >= 40
    assert load_validation_set("none") == []
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"prompt": " Q? ", "reference": "A."}) + "\n\n")
    assert load_validation_set(path) == [ValidationPair("Q?", "A.")]  # a path object works too
