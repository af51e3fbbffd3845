"""benchmarks/bench_length_drift.py's pure parts: which answers it reads, and the unpaired ratio's interval."""

from __future__ import annotations

import json

from .conftest import load_benchmark


def _bench():
    return load_benchmark("bench_length_drift")


def test_it_reads_a_rounds_own_answers_to_ordinary_prompts_and_its_kept_lengths(tmp_path):
    bench = _bench()
    rows = [
        {"prompt": "a", "calls_for": None, "from_round": None, "kept": True, "num_tokens": 90},
        {"prompt": "b", "calls_for": "refusal", "from_round": None, "kept": True, "num_tokens": 40},  # a refusal
        {"prompt": "c", "calls_for": None, "from_round": 1, "kept": True, "num_tokens": 70},  # carried from round 1
        {"prompt": "d", "calls_for": None, "from_round": None, "kept": False, "num_tokens": 160},  # dropped
    ]
    (tmp_path / "round_2").mkdir()
    (tmp_path / "round_2" / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["prompt"] for r in bench.fresh_ordinary(tmp_path, 2)] == ["a", "d"]
    assert bench.kept_tokens(tmp_path, 2) == [90, 40]
    assert bench.fresh_ordinary(tmp_path, 3) == [] and bench.kept_tokens(tmp_path, 3) == []


def test_the_unpaired_ratio_and_its_bootstrap_interval():
    bench = _bench()
    first, last = [80, 100, 120, 60, 140] * 4, [60, 75, 90, 45, 105] * 4  # every answer 25% shorter
    ratio, low, high = bench.bootstrap_ratio(first, last)
    assert abs(ratio - 0.75) < 1e-9 and low < 0.75 < high and high < 1.0
    ratio, low, high = bench.bootstrap_ratio(first[:3], last[:3])  # three answers: an interval that says little
    assert high - low > 0.3
