"""`trl_soft.curriculum`: difficulty scorers on hand-made data, the order they induce, and the curriculum inputs a
trainer refuses before any model loads."""

import math

import pytest
import torch
from datasets import Dataset

from trl_soft import SOFTTrainer
from trl_soft.curriculum import (
    SCORERS,
    ScoringContext,
    check_scores,
    curriculum_order,
    heuristic_scores,
    length_scores,
    rare_word_rate,
)
from trl_soft.prompting import PromptFormatter, load_principles

from .conftest import UNLOADABLE, make_tiny_llama, prompt_dataset, tiny_config

PROMPTS = ["Say hi.", "What is the boiling point of water at sea level?", "Name a colour.", "Explain photosynthesis."]
RESPONSES = [
    "Hi there! It is nice to meet you and I hope your day is going well.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Blue.",
    "Photosynthesis converts chlorophyll-captured sunlight, carbon dioxide and water into glucose and oxygen.",
]


def test_length_scores_count_response_tokens_and_order_short_first(tokenizer):
    scores = length_scores(PROMPTS, RESPONSES, ScoringContext(tokenizer=tokenizer))
    assert scores == [float(len(tokenizer(r, add_special_tokens=False)["input_ids"])) for r in RESPONSES]
    assert curriculum_order(scores)[0] == 2  # "Blue." is the easiest
    assert curriculum_order(scores, descending=True)[-1] == 2


def test_rare_word_rate_counts_words_without_a_single_token(tokenizer):
    assert rare_word_rate("the cat and the dog", tokenizer) == 0.0
    assert rare_word_rate("zxqvwy blorptastic", tokenizer) == 1.0
    assert rare_word_rate("the zxqvwy", tokenizer) == 0.5
    assert rare_word_rate("123 !!!", tokenizer) == 0.0


def test_heuristic_is_the_documented_formula(tokenizer):
    context = ScoringContext(tokenizer=tokenizer)
    scores = heuristic_scores(PROMPTS, RESPONSES, context)

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for prompt, response, score in zip(PROMPTS, RESPONSES, scores):
        expected = math.log1p(tokens(response)) + 0.5 * math.log1p(tokens(prompt)) + 2 * rare_word_rate(
            response, tokenizer
        )
        assert score == pytest.approx(expected)
    # Same length, rarer words: harder.
    plain, rare = heuristic_scores(["Q"] * 2, ["the cat sat on the mat", "zxqvwy blorptastic quuxly"], context)
    assert rare > plain
    assert curriculum_order(scores)[0] == 2


def test_perplexity_scores_equal_a_direct_computation(tokenizer):
    model = make_tiny_llama(tokenizer).eval()
    formatter = PromptFormatter(tokenizer, load_principles())
    context = ScoringContext(tokenizer=tokenizer, model=model, formatter=formatter, batch_size=3)
    scores = SCORERS["perplexity"](PROMPTS, RESPONSES, context)
    for prompt, response, score in zip(PROMPTS, RESPONSES, scores):
        prompt_text, completion_text = formatter.engraving_texts(prompt, response)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt_text + completion_text, add_special_tokens=False)["input_ids"]
        labels = torch.tensor([[-100] * len(prompt_ids) + full_ids[len(prompt_ids):]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([full_ids]), labels=labels).loss
        assert score == pytest.approx(math.exp(loss.item()), rel=1e-4)


def test_column_scores_read_the_prompt_dataset_row(tokenizer):
    dataset = Dataset.from_list([{"prompt": p, "level": float(i * 10)} for i, p in enumerate(PROMPTS)])
    context = ScoringContext(tokenizer=tokenizer, prompt_dataset=dataset, column="level", prompt_indices=[3, 0])
    assert SCORERS["column"](["a", "b"], ["x", "y"], context) == [30.0, 0.0]


def test_check_scores_rejects_wrong_counts_and_nan():
    assert check_scores([1, 2.5], 2, "s") == [1.0, 2.5]
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        check_scores([1.0], 2, "s")
    with pytest.raises(ValueError, match="non-finite"):
        check_scores([1.0, float("nan")], 2, "s")


def test_order_is_stable_on_ties_and_buckets_shuffle_only_within_themselves():
    scores = [5, 1, 3, 1, 9, 7, 2, 8]
    assert curriculum_order(scores) == [1, 3, 6, 2, 0, 5, 7, 4]
    assert curriculum_order(scores, descending=True) == [4, 7, 5, 0, 2, 6, 1, 3]
    bucketed = curriculum_order(scores, bucket_size=4, seed=3)
    assert bucketed == curriculum_order(scores, bucket_size=4, seed=3)  # seeded: the same everywhere
    assert set(bucketed[:4]) == {1, 3, 6, 2} and set(bucketed[4:]) == {0, 5, 7, 4}
    assert any(curriculum_order(scores, bucket_size=4, seed=s) != curriculum_order(scores) for s in range(5))


def _zeros(prompts, responses, context):
    return [0.0] * len(prompts)


@pytest.mark.parametrize(
    ("overrides", "level", "scorer", "message"),
    [
        ({"curriculum": "column", "curriculum_column": "level"}, None, None, "curriculum_column='level'.*columns"),
        ({"curriculum": "column", "curriculum_column": "level"}, "easy", None, "curriculum_column='level'.*number"),
        ({"curriculum": "custom"}, None, None, "difficulty_scorer"),  # custom needs a scorer ...
        ({}, None, _zeros, "curriculum='custom'"),  # ... and a scorer needs custom
    ],
    ids=["column-the-prompts-lack", "column-not-numeric", "custom-without-scorer", "scorer-without-custom"],
)
def test_curriculum_inputs_are_refused_before_a_model_loads(tmp_path, overrides, level, scorer, message):
    dataset = prompt_dataset(12) if level is None else prompt_dataset(12).add_column("level", [level] * 12)
    with pytest.raises(ValueError, match=message):
        SOFTTrainer(model=UNLOADABLE, args=tiny_config(tmp_path / "out", **overrides), train_dataset=dataset,
                    difficulty_scorer=scorer)
