"""`trl_soft.generation`: transformers generation (greedy, seeded sampling, stop strings) and its shared-prefix cache."""

import copy

from trl_soft.generation import GenerationSettings, generate_completions

PROMPTS = ["Hello there, how are", "The capital of France is", "One two three", "Write a short poem about the sea"]


def test_greedy_generation_is_deterministic_and_in_order(tiny_model, tokenizer):
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, batch_size=2)
    tiny_model.train()
    batched = generate_completions(tiny_model, tokenizer, PROMPTS, settings)
    assert tiny_model.training  # mode restored
    single = [generate_completions(tiny_model, tokenizer, [p], settings)[0] for p in PROMPTS]
    assert [r.text for r in batched] == [r.text for r in single]  # left padding changes nothing, order kept
    assert all(r.num_tokens <= 6 for r in batched)
    assert all(not r.finished for r in batched if r.num_tokens == 6)


def test_sampling_is_seeded(tiny_model, tokenizer):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=4, seed=3)
    first = [r.text for r in generate_completions(tiny_model, tokenizer, PROMPTS, settings)]
    again = [r.text for r in generate_completions(tiny_model, tokenizer, PROMPTS, settings)]
    other = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=4, seed=4)
    assert first == again
    assert first != [r.text for r in generate_completions(tiny_model, tokenizer, PROMPTS, other)]


def test_stop_strings_end_an_answer(tiny_model, tokenizer):
    free = generate_completions(tiny_model, tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=8, temperature=0))
    first_word = free[0].text[: max(2, len(free[0].text) // 2)]
    stopped = generate_completions(
        tiny_model, tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=8, temperature=0,
                                                               stop_strings=(first_word,))
    )
    assert stopped[0].finished and stopped[0].num_tokens <= free[0].num_tokens


def test_the_stop_string_criterion_is_built_once_per_tokenizer_not_per_batch(tiny_model, tokenizer, monkeypatch):
    """transformers' own cache for it never hits with a fast tokenizer (the vocabulary comes back in a new order on
    every call), so handing `stop_strings` to `generate` walked the whole vocabulary again for every batch."""
    import trl_soft.generation as generation

    built = []

    class Counted(generation.StopStringCriteria):
        def __init__(self, *args, **kwargs):
            built.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "StopStringCriteria", Counted)
    monkeypatch.setattr(generation, "_STOP_CRITERIA", type(generation._STOP_CRITERIA)())  # what earlier tests built
    stops = ("zzz unlikely", "\n\n")
    settings = GenerationSettings(max_new_tokens=4, temperature=0, batch_size=1, stop_strings=stops)
    first = generate_completions(tiny_model, tokenizer, PROMPTS, settings)
    again = generate_completions(tiny_model, tokenizer, PROMPTS, settings)
    assert built == [list(stops)]  # 8 batches, 2 calls: one build
    assert [r.text for r in first] == [r.text for r in again]
    generate_completions(tiny_model, tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=2, stop_strings=("x",)))
    assert built == [list(stops), ["x"]]
    grown = copy.deepcopy(tokenizer)  # a tokenizer that gains a token can stop on it: built again
    generation.stop_string_criteria(grown, stops)
    grown.add_tokens(["<zzz-new>"])
    generation.stop_string_criteria(grown, stops)
    assert built == [list(stops), ["x"], list(stops), list(stops)]


def test_shared_prefix_length():
    from trl_soft.generation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each keeps one token of its own
    assert shared_prefix_length([[7], [8]]) == 0


def test_prefix_cache_gives_the_same_greedy_answers(tiny_model, tokenizer):
    header = "You are a careful assistant. Follow these rules: be brief, be honest, be kind. " * 3
    prompts = [header + p for p in PROMPTS]
    cached = GenerationSettings(max_new_tokens=8, temperature=0.0, batch_size=3, prefix_cache=True)
    plain = GenerationSettings(max_new_tokens=8, temperature=0.0, batch_size=3, prefix_cache=False)
    with_cache = generate_completions(tiny_model, tokenizer, prompts, cached)
    without = generate_completions(tiny_model, tokenizer, prompts, plain)
    assert [r.text for r in with_cache] == [r.text for r in without]
