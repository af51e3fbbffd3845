"""`trl_soft.evaluation.diagnostics`: diversity measures on hand-made texts, and the collapse diagnostics on a real model (the
token entropy they average is checked against a direct computation in tests/test_evaluation.py)."""

import math

import pytest

from trl_soft.evaluation.diagnostics import collapse_diagnostics, distinct_n, self_bleu, sentence_bleu
from trl_soft.generation import GenerationSettings
from trl_soft.prompting import PromptFormatter, load_principles

from .conftest import make_tiny_llama


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(0.5)
    assert distinct_n(["one"], 2) == 0.0


def test_bleu_of_identical_texts_is_one_and_self_bleu_rises_as_answers_converge():
    words = "the quick brown fox jumps over the lazy dog".split()
    assert sentence_bleu(words, [words]) == pytest.approx(1.0)
    varied = ["the cat sat on the mat today", "a dog ran in the park at noon", "rain fell over the quiet hills"]
    alike = ["the cat sat on the mat today", "the cat sat on the mat now", "the cat sat on a mat today"]
    assert self_bleu(varied) < 0.2 < self_bleu(alike)
    assert self_bleu(["only one"]) == 0.0


def test_collapse_diagnostics_on_a_real_model(tokenizer):
    model = make_tiny_llama(tokenizer)
    formatter = PromptFormatter(tokenizer, load_principles())
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, batch_size=4, seed=1,
                                  stop_strings=formatter.stop_strings)
    metrics = collapse_diagnostics(model, formatter, ["Name a fruit.", "Say hello.", "Count to three."], settings)
    assert set(metrics) == {"sample_entropy", "sample_distinct_1", "sample_distinct_2", "sample_self_bleu",
                            "sample_tokens"}
    # An untrained model over a 49k vocabulary is nearly uniform: its entropy is close to log(vocab).
    assert 0.8 * math.log(len(tokenizer)) < metrics["sample_entropy"] <= math.log(len(tokenizer)) + 1e-3
    assert 0 < metrics["sample_distinct_1"] <= 1 and metrics["sample_tokens"] == 8
    assert collapse_diagnostics(model, formatter, ["Name a fruit.", "Say hello.", "Count to three."], settings) == (
        metrics
    )  # seeded: rounds are compared on the same footing
