"""`trl_soft.data`: the round schedules, the prompt sets (refused before a model loads when unusable), the prompt and
validation loaders."""

import json

import pytest

from trl_soft.data import load_prompt_dataset, load_validation_set, split_rounds

from .conftest import prompt_dataset, unloaded_trainer


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


@pytest.mark.parametrize(
    ("num_prompts", "column", "num_rounds", "message"),
    [
        (12, "question", 2, r"`prompt_column`.*'question'.*--prompt_column"),  # names the column and the flag
        (0, "prompt", 2, "empty"),
        (2, "prompt", 3, "fewer than `num_rounds`"),
    ],
)
def test_bad_prompt_sets_are_refused_before_a_model_loads(tmp_path, num_prompts, column, num_rounds, message):
    with pytest.raises(ValueError, match=message):
        unloaded_trainer(tmp_path, dataset=prompt_dataset(num_prompts, column=column), num_rounds=num_rounds)


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
