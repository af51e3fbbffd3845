"""`trl_soft.prompting`: generation and engraving prompts, answer extraction, exemplar sampling, and the principles
and exemplar files (refused before a model loads when unusable)."""

import json

import pytest

from trl_soft.prompting import (
    PLAIN_ASSISTANT_TAG,
    PLAIN_USER_TAG,
    Exemplar,
    ExemplarSampler,
    PromptFormatter,
    load_exemplars,
    load_principles,
)

from .conftest import unloaded_trainer

POOL = [Exemplar(id=f"ex-{i}", prompt=f"Question {i}?", response=f"Answer number {i}.") for i in range(10)]


@pytest.fixture(scope="module")
def principles():
    return load_principles()


def test_chat_generation_prompt_has_principles_exemplars_then_prompt(tokenizer, principles):
    formatter = PromptFormatter(tokenizer, principles)
    assert formatter.uses_chat
    text = formatter.generation_prompt("How do tides work?", POOL[:2])
    header = principles.render()
    assert header in text
    positions = [text.index(s) for s in (header, "Question 0?", "Answer number 0.", "Question 1?", "How do tides work?")]
    assert positions == sorted(positions)
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_plain_generation_prompt_for_base_models(tokenizer, principles):
    formatter = PromptFormatter(tokenizer, principles, prompt_format="plain")
    text = formatter.generation_prompt("How do tides work?", POOL[:1])
    assert text.endswith(f"{PLAIN_USER_TAG} How do tides work?\n{PLAIN_ASSISTANT_TAG}")
    assert f"{PLAIN_ASSISTANT_TAG} Answer number 0." in text
    assert "<|im_start|>" not in text


def test_chat_format_without_template_is_refused(tokenizer, principles):
    from copy import deepcopy

    bare = deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="prompt_format"):
        PromptFormatter(bare, principles, prompt_format="chat")
    assert not PromptFormatter(bare, principles, prompt_format="auto").uses_chat


def test_extract_response_cuts_at_turn_markers(tokenizer, principles):
    chat = PromptFormatter(tokenizer, principles)
    assert chat.extract_response(" Tides come from the Moon.<|im_end|>\n<|im_start|>user\nmore") == (
        "Tides come from the Moon."
    )
    plain = PromptFormatter(tokenizer, principles, prompt_format="plain")
    assert plain.extract_response(" The Moon pulls water.\n\n### User: next question") == "The Moon pulls water."


def test_extract_response_drops_internal_thoughts(tokenizer, principles):
    formatter = PromptFormatter(tokenizer, principles, use_internal_thoughts=True)
    raw = "Internal thoughts: factual, be brief.\nAnswer: Paris is the capital.<|im_end|>"
    assert formatter.extract_response(raw) == "Paris is the capital."
    with_thoughts = Exemplar(id="t", prompt="Capital?", response="Paris.", internal_thoughts="Be brief.")
    assert "Internal thoughts: Be brief." in formatter.generation_prompt("Q?", [with_thoughts])


def test_engraving_example_has_no_principles_or_exemplars(tokenizer, principles):
    formatter = PromptFormatter(tokenizer, principles)
    example = formatter.engraving_example("How do tides work?", "The Moon's gravity.")
    assert example["prompt"] == [{"role": "user", "content": "How do tides work?"}]
    assert example["completion"] == [{"role": "assistant", "content": "The Moon's gravity."}]
    prompt_text, completion_text = formatter.engraving_texts("How do tides work?", "The Moon's gravity.")
    assert principles.items[0].text not in prompt_text
    assert completion_text.startswith("The Moon's gravity.")
    one_shot = formatter.engraving_example("Q?", "A.", shot=POOL[3])
    assert [m["content"] for m in one_shot["prompt"]] == ["Question 3?", "Answer number 3.", "Q?"]


def test_plain_engraving_texts_end_with_eos(tokenizer, principles):
    formatter = PromptFormatter(tokenizer, principles, prompt_format="plain")
    prompt_text, completion_text = formatter.engraving_texts("Q?", "A.")
    assert prompt_text == f"{PLAIN_USER_TAG} Q?\n{PLAIN_ASSISTANT_TAG}"
    assert completion_text == " A." + tokenizer.eos_token


def test_random_sampling_is_diverse_seeded_and_distinct():
    sampler = ExemplarSampler(POOL, k=3, mode="random", seed=7)
    draws = [tuple(e.id for e in sampler.sample(1, i)) for i in range(40)]
    assert all(len(set(d)) == 3 for d in draws)
    assert len(set(draws)) > 30  # nearly every prompt sees a different set
    assert len({e for d in draws for e in d}) == len(POOL)  # the whole pool gets used
    again = ExemplarSampler(POOL, k=3, mode="random", seed=7)
    assert draws == [tuple(e.id for e in again.sample(1, i)) for i in range(40)]
    other_seed = ExemplarSampler(POOL, k=3, mode="random", seed=8)
    assert draws != [tuple(e.id for e in other_seed.sample(1, i)) for i in range(40)]
    assert draws != [tuple(e.id for e in sampler.sample(2, i)) for i in range(40)]  # rounds differ too


def test_fixed_sampling_is_the_same_everywhere():
    sampler = ExemplarSampler(POOL, k=3, mode="fixed", seed=7)
    first = sampler.sample(1, 0)
    assert all(sampler.sample(r, i) == first for r in (1, 2) for i in range(20))


def test_exemplar_pool_smaller_than_k(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "prompt": "Q?", "response": "A."}) + "\n")
    with pytest.raises(ValueError, match="num_exemplars"):
        unloaded_trainer(tmp_path, exemplars_path=str(pool), num_exemplars=2)


def test_missing_principles_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="principles_path"):
        unloaded_trainer(tmp_path, principles_path=str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"id": "a", "prompt": "Q?"}', "'response'"),
        ('{"id": "a", "prompt": "", "response": "A."}', "'prompt'"),
        ('["not", "an", "object"]', "JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_exemplar_names_line_and_field(tmp_path, line, fragment):
    path = tmp_path / "pool.jsonl"
    good = json.dumps({"id": "ok", "prompt": "Q?", "response": "A."})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=fragment) as info:
        load_exemplars(path)
    assert f"{path}:2" in str(info.value)


def test_duplicate_exemplar_ids_are_refused(tmp_path):
    path = tmp_path / "pool.jsonl"
    row = json.dumps({"id": "same", "prompt": "Q?", "response": "A."})
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(ValueError, match="'same'"):
        load_exemplars(path)
