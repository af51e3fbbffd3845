"""benchmarks/bench_levers.py's paired TruthfulQA figures: which way the one-sided p points."""

from __future__ import annotations

import json

from .conftest import load_benchmark


def _bench():
    return load_benchmark("bench_levers")


def test_mc2_p_worse_is_small_when_the_final_model_is_clearly_worse_and_large_when_better():
    bench = _bench()
    start_mc1 = [True, False] * 50
    start_mc2 = [0.40 + 0.002 * (i % 7) for i in range(100)]
    worse = bench.paired_truthfulqa((start_mc1, start_mc2), (start_mc1, [v - 0.01 for v in start_mc2]))
    better = bench.paired_truthfulqa((start_mc1, start_mc2), (start_mc1, [v + 0.01 for v in start_mc2]))
    assert worse["mc2_diff"] < 0 and worse["mc2_p_worse"] < 0.001
    assert better["mc2_diff"] > 0 and better["mc2_p_worse"] > 0.999
    assert worse["mc1_gained"] == worse["mc1_lost"] == 0 and worse["mc1_p_worse"] == 1.0


def test_other_answer_tokens_leaves_out_refusals_admissions_carried_and_dropped_answers(tmp_path):
    bench = _bench()
    rows = [
        {"kept": True, "from_round": None, "calls_for": None, "num_tokens": 100},
        {"kept": True, "from_round": None, "calls_for": None, "num_tokens": 60},
        {"kept": True, "from_round": None, "calls_for": "refusal", "num_tokens": 20},  # the mix's short refusal
        {"kept": True, "from_round": 1, "calls_for": None, "num_tokens": 5},  # carried from an earlier round
        {"kept": False, "from_round": None, "calls_for": None, "num_tokens": 7},  # dropped by a filter
    ]
    generations = tmp_path / "generations.jsonl"
    generations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.other_answer_tokens(generations) == 80
    assert bench.other_answer_tokens(tmp_path / "missing.jsonl") is None


def test_looping_answers_counts_zero_shot_loops_only(tmp_path):
    bench = _bench()
    rows = [
        {"style": "zero_shot", "evidence": "loop: 67% repeated 4-grams"},
        {"style": "zero_shot", "evidence": "I'm sorry"},
        {"style": "fewshot", "evidence": "loop: 50% repeated 4-grams"},  # the premise check's principled answers
        {"style": "zero_shot", "evidence": ""},
    ]
    behaviour = tmp_path / "behaviour.jsonl"
    behaviour.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.looping_answers(behaviour) == 1
    assert bench.looping_answers(tmp_path / "missing.jsonl") is None


def test_mc2_by_length_splits_the_change_by_which_answers_are_shorter():
    bench = _bench()
    start = [0.5 + 0.001 * i for i in range(8)]
    final = [v - 0.02 if i % 2 == 0 else v for i, v in enumerate(start)]  # loses only where the truth is shorter
    split = bench.mc2_by_length(start, final, [i % 2 == 0 for i in range(8)])
    assert split["shorter"]["n"] == split["longer"]["n"] == 4
    assert abs(split["shorter"]["diff"] + 0.02) < 1e-9 and split["longer"]["diff"] == 0.0
    assert "-2.00" in bench.by_length(split) and bench.by_length({}) == "-"


def test_the_truthfulqa_halves_of_the_interpolation_bench_are_disjoint_fixed_and_whole():
    bench = load_benchmark("bench_interpolation")
    a, b = bench.tqa_half(817, "A"), bench.tqa_half(817, "B")
    assert len(a) == 408 and len(b) == 409 and not set(a) & set(b) and sorted(a + b) == list(range(817))
    assert a == bench.tqa_half(817, "A") and a != list(range(408))  # seeded, not the first questions
