"""Named benchmarks (`truthfulqa_mc1`, `truthfulqa_mc2`, `hhh`): load and check the data, then score a model.

Loading is separate from scoring so that a missing file, a malformed row or an unknown name fails before any model
work. Results are a flat `{metric name: value}` dict, ready for round metrics, the manifest and `report_to`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import DATA_DIR_ENV, resolve_data_dir
from ..settings import ConcernSettings, setting
from . import hhh, truthfulqa
from .multiple_choice import score_choices

BENCHMARKS = ("truthfulqa_mc1", "truthfulqa_mc2", "hhh")
HHH_CATEGORIES = (*hhh.CATEGORIES, "overall")


def benchmark_metrics(name: str) -> list[str]:
    """The metrics one benchmark produces."""
    if name == "hhh":
        return [f"hhh_{c}" for c in HHH_CATEGORIES] + [f"hhh_acc_norm_{c}" for c in HHH_CATEGORIES]
    return [name]


@dataclass(frozen=True)
class BenchmarkSettings(ConcernSettings):
    """Which benchmarks score the starting model and every round, on how many items, from where."""

    NOT_FINGERPRINTED = frozenset({"data_dir"})

    names: tuple[str, ...] = setting(
        None,
        "Benchmarks scored on the starting model and after every round, by name: truthfulqa_mc1, "
        "truthfulqa_mc2, hhh (scored as lm-evaluation-harness / BIG-bench do). Default: none (they take minutes "
        "on CPU); the results join the round metrics, the manifest and `report_to`.",
        name="benchmarks",
    )
    limit: int | None = setting(
        None, "Score only the first N TruthfulQA questions and N HHH items per category (quick looks).",
        name="benchmark_limit",
    )
    data_dir: str | None = setting(
        None,
        "Local folder holding truthfulqa/ and hhh_alignment/ (e.g. a copy of the hub datasets). Default: "
        "$TRL_SOFT_DATA_DIR, else the hub.",
        name="benchmark_data_dir",
    )

    def check(self) -> None:
        unknown = sorted(set(self.names) - set(BENCHMARKS))
        if unknown:
            raise self.field_error("names", f"has unknown name(s) {unknown}; choose from {list(BENCHMARKS)}.")
        if self.limit is not None and self.limit < 1:
            raise self.field_error("limit", f"must be >= 1 (or unset for all items); got {self.limit}.")
        if self.names:
            check_data_dir(self.data_dir, "`benchmark_data_dir`")

    def metric_names(self) -> set[str]:
        return {metric for name in self.names for metric in benchmark_metrics(name)}

    def load(self) -> BenchmarkSuite:
        return BenchmarkSuite.load(self.names, self.data_dir, self.limit)


def check_data_dir(data_dir: str | None, who: str) -> None:
    """The local data folder, when one is given (or `$TRL_SOFT_DATA_DIR` is set), must exist: else a typo would be
    taken for a hub name and reported as a failed download."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir, who = os.environ[DATA_DIR_ENV], f"`${DATA_DIR_ENV}`"
    if data_dir is not None and not os.path.exists(os.path.expanduser(data_dir)):
        raise FileNotFoundError(
            f"{who}: no such folder {data_dir!r}. Point it at a local copy holding {truthfulqa.LOCAL_FILE} and "
            f"{hhh.LOCAL_DIR}/<category>/task.json (see docs/evaluation.md), or leave it unset to read the hub."
        )


def parse_benchmark_names(names: str | Sequence[str] | None) -> list[str]:
    """Accept a comma-separated string or a list; reject unknown names with the list of known ones."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"`benchmarks` has unknown name(s) {unknown}; choose from {list(BENCHMARKS)}.")
    return list(dict.fromkeys(names))


@dataclass
class BenchmarkSuite:
    """The data of the chosen benchmarks, loaded and checked."""

    names: list[str]
    truthfulqa_items: list[truthfulqa.TruthfulQAItem] = field(default_factory=list)
    hhh_items: list[hhh.HHHItem] = field(default_factory=list)
    truthfulqa_template: str | None = None
    hhh_answer_separator: str = " "

    @classmethod
    def load(
        cls,
        names: str | Sequence[str] | None,
        data_dir: str | None = None,
        limit: int | None = None,
        truthfulqa_template: str | None = None,
        hhh_answer_separator: str = " ",
    ) -> BenchmarkSuite:
        chosen = parse_benchmark_names(names)
        if chosen:
            check_data_dir(data_dir, "`data_dir`")
        source = resolve_data_dir(data_dir)
        suite = cls(chosen, truthfulqa_template=truthfulqa_template, hhh_answer_separator=hhh_answer_separator)
        if any(n.startswith("truthfulqa") for n in chosen):
            suite.truthfulqa_items = truthfulqa.load_truthfulqa(source, limit)
            truthfulqa.check_template(truthfulqa_template)  # fail now if the prompt is unavailable or does not render
        if "hhh" in chosen:
            suite.hhh_items = hhh.load_hhh(source, limit)
        return suite

    def __bool__(self) -> bool:
        return bool(self.names)

    def texts(self) -> list[tuple[str, str]]:
        """`(source, question)` of every item, for the check that no training prompt is one (`trl_soft.overlap`)."""
        return [("TruthfulQA", item.question) for item in self.truthfulqa_items] + [
            ("HHH", item.context) for item in self.hhh_items
        ]

    def evaluate(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_batch: int = 32
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.truthfulqa_items:
            requests, layout = truthfulqa.build_requests(self.truthfulqa_items, self.truthfulqa_template)
            scores = score_choices(model, tokenizer, requests, max_batch=max_batch, desc="TruthfulQA")
            result = truthfulqa.aggregate(self.truthfulqa_items, scores, layout)
            if "truthfulqa_mc1" in self.names:
                metrics["truthfulqa_mc1"] = result.mc1
            if "truthfulqa_mc2" in self.names:
                metrics["truthfulqa_mc2"] = result.mc2
        if self.hhh_items:
            requests = hhh.build_requests(self.hhh_items, self.hhh_answer_separator)
            scores = score_choices(model, tokenizer, requests, max_batch=max_batch, desc="HHH")
            result = hhh.aggregate(self.hhh_items, scores)
            metrics.update({f"hhh_{k}": v for k, v in result.accuracy.items()})
            metrics.update({f"hhh_acc_norm_{k}": v for k, v in result.acc_norm.items()})
        return metrics
