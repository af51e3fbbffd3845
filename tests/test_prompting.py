"""`trl_soft.prompting`: generation and engraving prompts, answer extraction, exemplar sampling, and the prompt
lengths a model can take. (Unusable principles and exemplar files, refused before a model loads:
tests/test_bad_inputs.py.)"""

import pytest

from trl_soft.prompting import (
    PLAIN_ASSISTANT_TAG,
    PLAIN_USER_TAG,
    Exemplar,
    ExemplarSampler,
    PromptFormatter,
    check_lengths,
    count_tokens,
    load_principles,
    model_context_length,
)

from .conftest import UNLOADABLE

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


def test_zero_shot_generation_draws_no_exemplars():
    assert ExemplarSampler(POOL, k=0).sample(1, 3) == [] and ExemplarSampler(POOL, k=0, mode="fixed").sample(1, 3) == []


def test_the_context_length_comes_from_the_config_alone(tmp_path, tiny_model):
    tiny_model.config.save_pretrained(tmp_path)  # config.json, no weights
    assert model_context_length(str(tmp_path)) == 2048 == model_context_length(tiny_model)
    assert model_context_length(UNLOADABLE) is None  # offline: left to the engine


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_length_limits_are_exact(tokenizer, principles, prompt_format):
    # (prompts that do not fit, refused with their row and the fix: tests/test_bad_inputs.py)
    formatter = PromptFormatter(tokenizer, principles, prompt_format=prompt_format)
    sampler, rounds = ExemplarSampler(POOL, k=2, seed=3), [[0, 1], [2, 3]]
    prompts = ["How do tides work?", "Why is the sky blue?", "Name a prime.", "What is a lemma, in one line?"]
    generation = max(count_tokens(tokenizer, [formatter.generation_prompt(prompts[i], sampler.sample(t, i))])[0]
                     for t, chunk in enumerate(rounds, start=1) for i in chunk)
    engraving = max(count_tokens(tokenizer, [formatter.engraving_prompt(p)], special=prompt_format == "plain")[0]
                    for p in prompts)
    check_lengths(formatter, prompts, rounds, sampler, engraving + 1, 64, generation + 64)
    check_lengths(formatter, prompts, rounds, sampler, None, 64, None)  # nothing known: nothing checked
    with pytest.raises(ValueError, match=f"needs {generation + 64}, more than the {generation + 63} tokens"):
        check_lengths(formatter, prompts, rounds, sampler, engraving + 1, 64, generation + 63)
    with pytest.raises(ValueError, match=f"with room for an answer is {engraving + 1};"):
        check_lengths(formatter, prompts, rounds, sampler, engraving, 64, generation + 64)
