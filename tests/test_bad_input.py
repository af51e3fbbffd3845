"""Every bad input is refused before a model is loaded or a token generated, naming the field and the fix."""

import json

import pytest

from trl_soft import SOFTTrainer
from trl_soft.state import SOFTState

from .conftest import prompt_dataset, tiny_config

# A model id that would fail loudly (and differently) if anything tried to load it.
UNLOADABLE = "trl-soft-tests/never-loaded"  # a hub id: passes the path check, fails offline if loaded


def _trainer(tmp_path, dataset=None, model=None, **overrides):
    return SOFTTrainer(
        model=model or UNLOADABLE,
        args=tiny_config(tmp_path / "out", **overrides),
        train_dataset=dataset if dataset is not None else prompt_dataset(12),
    )


def test_missing_prompt_column(tmp_path):
    with pytest.raises(ValueError, match="prompt_column.*question"):
        _trainer(tmp_path, dataset=prompt_dataset(12, column="question"))


def test_misnamed_prompt_column_can_be_fixed_with_the_flag(tmp_path, smol_path):
    with pytest.raises(ValueError, match="--prompt_column"):
        _trainer(tmp_path, dataset=prompt_dataset(12, column="instruction"))


def test_empty_prompt_set(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        _trainer(tmp_path, dataset=prompt_dataset(0))


def test_fewer_prompts_than_rounds(tmp_path):
    with pytest.raises(ValueError, match="num_rounds"):
        _trainer(tmp_path, dataset=prompt_dataset(2), num_rounds=3)


def test_exemplar_pool_smaller_than_k(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "prompt": "Q?", "response": "A."}) + "\n")
    with pytest.raises(ValueError, match="num_exemplars"):
        _trainer(tmp_path, exemplars_path=str(pool), num_exemplars=2)


def test_malformed_exemplar(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "prompt": "Q?"}) + "\n")
    with pytest.raises(ValueError, match="Malformed exemplar.*'response'"):
        _trainer(tmp_path, exemplars_path=str(pool))


def test_unknown_curriculum(tmp_path):
    with pytest.raises(ValueError, match="curriculum"):
        _trainer(tmp_path, curriculum="by-vibes")


def test_model_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_name_or_path"):
        _trainer(tmp_path, model=str(tmp_path / "no" / "such" / "model"))


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="output_dir"):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(blocker / "out"), train_dataset=prompt_dataset(12))


def test_existing_run_from_a_different_config(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    SOFTState(config_hash="from-another-config", num_rounds=2, rounds_completed=1).save(out)
    with pytest.raises(ValueError, match="different configuration.*overwrite_output_dir"):
        _trainer(tmp_path)


def test_missing_principles_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="principles_path"):
        _trainer(tmp_path, principles_path=str(tmp_path / "nope.json"))


def test_column_curriculum_with_a_column_the_prompts_lack(tmp_path):
    with pytest.raises(ValueError, match="curriculum_column='level'.*columns"):
        _trainer(tmp_path, curriculum="column", curriculum_column="level")


def test_column_curriculum_with_non_numeric_values(tmp_path):
    dataset = prompt_dataset(12).add_column("level", ["easy"] * 12)
    with pytest.raises(ValueError, match="curriculum_column='level'.*number"):
        _trainer(tmp_path, dataset=dataset, curriculum="column", curriculum_column="level")


def test_custom_curriculum_needs_a_scorer_and_a_scorer_needs_custom(tmp_path):
    with pytest.raises(ValueError, match="difficulty_scorer"):
        _trainer(tmp_path, curriculum="custom")
    with pytest.raises(ValueError, match="curriculum='custom'"):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(tmp_path / "out"), train_dataset=prompt_dataset(12),
                    difficulty_scorer=lambda prompts, responses, context: [0.0] * len(prompts))


def test_a_watched_metric_no_round_produces_is_refused(tmp_path):
    from trl_soft import EarlyCollapseCallback

    with pytest.raises(ValueError, match="'reward'.*collapse_metric"):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(tmp_path / "out"), train_dataset=prompt_dataset(12),
                    callbacks=[EarlyCollapseCallback(metric="reward")])


def test_patience_below_one_is_refused():
    from trl_soft import EarlyCollapseCallback

    with pytest.raises(ValueError, match="patience"):
        EarlyCollapseCallback(patience=0)


def test_missing_deepspeed_config_is_refused_at_config_time(tmp_path):
    with pytest.raises(FileNotFoundError, match="`deepspeed`.*no-such-ds.json"):
        tiny_config(tmp_path / "out", deepspeed=str(tmp_path / "no-such-ds.json"))
