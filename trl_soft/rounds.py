"""The rounds: how many, which prompts each answers, where its weights start, and the `Round` record.

`RoundSettings` is the round loop's own settings (built once by `SOFTConfig`). A `Round` carries one round through the
loop: its prompts and exemplar sets, the generations, the filter verdicts and their counts, the difficulty scores and
the one training order computed from them, then the metrics and timings. `generations.jsonl` and `metrics.json` are
written from it and a resumed round is read back into it (their rows: `rows`, `from_rows`), when and where the run's
store says (`trl_soft.run_store.RunStore`); the training sampler reads its order.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aligned import figures as aligned_figures
from .data import split_rounds
from .engines.settings import SYNC_METRIC
from .errors import SOFTRoundError
from .filters import Candidate
from .generation import GenerationResult
from .prompting import Exemplar
from .settings import ConcernSettings, setting
from .state import RoundPaths, atomic_write_json, atomic_write_jsonl, read_jsonl

PROMPT_SCHEDULES = ("disjoint", "reuse")
# The columns of `generations.jsonl`, one row per prompt (see `Round.rows`).
GENERATION_COLUMNS = (
    "prompt_index", "prompt", "exemplar_ids", "raw_output", "response", "num_tokens", "finished", "kept",
    "filter_reason", "difficulty", "train_position",
)
# The aligned data's columns (`cut`, `retries`, `from_round`, `calls_for`) are written in every row but not required:
# `from_rows` reads them with their defaults, so an interrupted round written before them still resumes.
# Best-of-n: a passing sample that was not the one chosen for its prompt (`Round.choose_best`).
NOT_BEST = "not_best"
ROUND_INITS = ("previous", "base")
ROUND_DATA = ("new", "accumulate")


@dataclass(frozen=True)
class RoundSettings(ConcernSettings):
    """How many rounds, which prompts each answers, and the weights each round's fine-tuning starts from."""

    NOT_FINGERPRINTED = frozenset({"overwrite_output_dir", "keep_checkpoints", "allow_eval_overlap"})
    LOWER_IS_BETTER = frozenset({"train_loss"})

    num_rounds: int = setting(
        3, "Number of bootstrapping rounds T (regenerate -> filter -> order -> fine-tune -> validate).",
    )
    prompts_per_round: int | None = setting(
        None,
        "Prompts answered per round. Default: the prompt set divided evenly among the rounds "
        "(the paper splits its prompt pool into one fresh chunk per round).",
    )
    prompt_schedule: str = setting(
        "disjoint",
        "How rounds take prompts: 'disjoint' (default, as in the paper: each round a fresh chunk that no "
        "other round sees) or 'reuse' (every round answers the same prompts again).",
    )
    prompt_column: str = setting("prompt", "Column of the prompt dataset that holds the user prompt text.")
    round_init: str = setting(
        "previous",
        "Weights each round's fine-tuning starts from: 'previous' (default, the paper: round t continues "
        "from round t-1) or 'base' (restart from the initial weights; data still comes from round t-1's model).",
    )
    data: str = setting(
        "accumulate",
        "What each round trains on: 'accumulate' (default: also the kept answers of every earlier accepted round, "
        "as they were generated: accumulating data bounds collapse, Gerstgrasser et al. 2024; with "
        "`round_init='base'` this is ReST-EM) or 'new' (its own kept answers only, the paper).",
        name="round_data",
    )
    replay_share: float | None = setting(
        None,
        "With `round_data='accumulate'`: the carried answers of earlier rounds are at most this share of the "
        "round's own kept answers, a seeded sample (a replay buffer: training time stays about constant over the "
        "rounds instead of growing with them). Default: every carried answer. No effect with `round_data='new'`.",
        name="round_replay_share",
    )
    allow_eval_overlap: bool = setting(
        False,
        "Train on prompts that are also evaluation items (behaviour sets, benchmarks). By default a run "
        "whose prompts contain one (same text, or most of its word 8-grams) is refused before any model loads, "
        "naming them.",
    )
    overwrite_output_dir: bool = setting(
        False,
        "Allow starting over in an `output_dir` that already holds a run (everything the run wrote is "
        "removed: rounds, final model, summary, manifest). Without it, an existing run must be continued with "
        "`resume_from_checkpoint`/`--resume`.",
    )
    keep_checkpoints: bool = setting(
        False,
        "Keep each round's Trainer checkpoints (`round_{t}/checkpoints/`, written with `save_strategy`) "
        "after the round's model is saved. By default they are removed then: resume needs only the round's model.",
        name="keep_round_checkpoints",
    )

    def check(self) -> None:
        if self.num_rounds < 1:
            raise self.field_error("num_rounds", f"must be at least 1; got {self.num_rounds}.")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise self.field_error(
                "prompts_per_round", f"must be at least 1 (or unset to split the prompts evenly); got "
                f"{self.prompts_per_round}."
            )
        self.check_choice("prompt_schedule", PROMPT_SCHEDULES)
        self.check_choice("round_init", ROUND_INITS)
        self.check_choice("data", ROUND_DATA)
        if self.replay_share is not None and self.replay_share <= 0:
            raise self.field_error("replay_share", f"must be > 0 (or unset to carry every earlier answer); got "
                                                   f"{self.replay_share}.")

    def replay_limit(self, own_kept: int) -> int | None:
        """How many earlier answers a round with `own_kept` answers of its own may carry (None: all of them)."""
        return None if self.replay_share is None else max(1, round(self.replay_share * own_kept))

    def metric_names(self) -> set[str]:
        return {"train_loss", "kept", "mean_response_tokens"}

    def prompt_indices(self, num_prompts: int, seed: int) -> list[list[int]]:
        """The prompt-dataset rows each round answers (seeded; the same on every process)."""
        return split_rounds(num_prompts, self.num_rounds, self.prompts_per_round, self.prompt_schedule, seed)


@dataclass
class Round:
    """One round of the loop, from its prompts to its metrics (see the module docstring).

    Per answer, in the round's prompt order: `prompts`, `exemplar_ids`, `raw_outputs`, `responses`, `num_tokens`,
    `finished`, `filter_reasons` (None = kept) and `difficulty` (None unless kept and a curriculum is on).
    `train_order` lists the kept answers' positions in the order they are trained on (None: the Trainer's shuffle).
    With best-of-n (`samples_per_prompt` n > 1) each prompt has n consecutive answers (`samples_per_prompt` of them,
    the same prompt index), and at most one per prompt is kept (`choose_best`).
    """

    index: int
    paths: RoundPaths
    seed: int
    prompt_indices: list[int]
    prompts: list[str]
    exemplar_ids: list[list[str]]
    raw_outputs: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    filter_reasons: list[str | None] = field(default_factory=list)
    difficulty: list[float | None] = field(default_factory=list)
    train_order: list[int] | None = None
    exemplar_sets: list[list[Exemplar]] | None = field(default=None, repr=False)  # None when read back
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    engine_sync_start: float = 0.0  # the engine's weight hand-over seconds when the round began
    resumed: bool = False  # the generations were read back from an interrupted attempt
    samples_per_prompt: int = 1
    # Per answer: cut at its last complete sentence (the length rule), the retries that found it (aligned data), and
    # for kept answers of an earlier accepted round carried into this one (`round_data='accumulate'`), that round.
    cut: list[bool] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    from_round: list[int | None] = field(default_factory=list)
    calls_for: list[str | None] = field(default_factory=list)  # what each prompt calls for (`aligned.kinds`)

    def __post_init__(self):
        size = len(self.prompts)
        self.calls_for = self.calls_for or [None] * size
        self.cut = self.cut or [False] * size
        self.retries = self.retries or [0] * size
        self.from_round = self.from_round or [None] * size

    @property
    def fresh(self) -> int:
        """How many answers this round generated (the carried ones follow them)."""
        return sum(r is None for r in self.from_round)

    @property
    def kept(self) -> list[int]:
        """Positions of the answers that passed every filter, in prompt order."""
        return [k for k, reason in enumerate(self.filter_reasons) if reason is None]

    @property
    def filter_counts(self) -> dict[str, int]:
        """How many answers each filter dropped, in the order reasons first occur."""
        return dict(Counter(reason for reason in self.filter_reasons if reason is not None))

    @property
    def train_positions(self) -> dict[int, int]:
        """prompt position -> rank in the training order."""
        return {position: rank for rank, position in enumerate(self.train_order or ())}

    def training_pairs(self) -> list[tuple[str, str]]:
        """The kept (prompt, response) pairs, in prompt order: the round dataset the sampler's order indexes."""
        return [(self.prompts[k], self.responses[k]) for k in self.kept]

    def sampler_order(self) -> list[int] | None:
        """The training order as indices into `training_pairs()`, or None for the Trainer's own shuffle."""
        if self.train_order is None:
            return None
        row = {position: i for i, position in enumerate(self.kept)}
        return [row[position] for position in self.train_order]

    def summary_metrics(self) -> dict[str, Any]:
        """The round's data figures, which open its metrics (with best-of-n, also the samples drawn and the prompts
        that had a passing one)."""
        n, fresh = self.samples_per_prompt, self.fresh
        kept = [k for k in self.kept if k < fresh]
        figures = {
            "round": self.index,
            "prompts": fresh // n,
            "kept": len(kept),
            "filtered": self.filter_counts,
            "mean_response_tokens": sum(self.num_tokens[k] for k in kept) / len(kept) if kept else 0.0,
            "cut": sum(self.cut[k] for k in kept),
            **aligned_figures(self.calls_for[:fresh], [r is None for r in self.filter_reasons[:fresh]],
                              self.retries[:fresh], n),
        }
        if n > 1:
            figures["samples"] = fresh
            figures["prompts_with_passing_sample"] = len({k // n for k in kept})
        if fresh < len(self.prompts):
            figures["carried"] = len(self.prompts) - fresh
        return figures

    def final_metrics(self, train_loss: float, train_steps: int, engine_sync_seconds: float) -> dict[str, Any]:
        """Everything the round measured, in the order its `metrics.json` shows it: data figures, training, the
        evaluation, the phase timings, and the seconds the engine spent taking the round's weights."""
        return {
            **self.summary_metrics(), "train_loss": train_loss, "train_steps": train_steps, **self.metrics,
            **{k: round(v, 3) for k, v in self.timings.items()},
            SYNC_METRIC: round(engine_sync_seconds - self.engine_sync_start, 3),
        }

    def timed(self, phase: str, started: float) -> Round:
        """Record `phase`'s seconds (`timings`), from `started` (a `time.perf_counter()`) to now."""
        self.timings[phase] = time.perf_counter() - started
        return self

    def set_difficulty(self, scores: Sequence[float], order: Sequence[int]) -> None:
        """The curriculum's scores of the kept answers (in `kept` order) and its training order (indices into them)."""
        kept = self.kept
        for k, score in zip(kept, scores):
            self.difficulty[k] = score
        self.train_order = [kept[j] for j in order]

    def choose_best(self) -> None:
        """Best-of-n: per prompt, keep the passing sample with the lowest difficulty score (the easiest, as SOFT trains
        easy to hard; without a curriculum, the first passing one) and mark the other passing ones `not_best`. The
        principle and honesty gates have judged every sample already, so a harmful prompt keeps a refusal whenever
        any of its samples refused."""
        n = self.samples_per_prompt
        if n == 1:
            return
        for start in range(0, self.fresh, n):
            passing = [k for k in range(start, start + n) if self.filter_reasons[k] is None]
            if not passing:
                continue
            scores = self.difficulty or [None] * len(self.prompts)
            best = min(passing, key=lambda k: (scores[k] if scores[k] is not None else 0.0, k))
            for k in passing:
                if k != best:
                    self.filter_reasons[k] = NOT_BEST
        if self.train_order is not None:
            self.train_order = [k for k in self.train_order if self.filter_reasons[k] is None]

    def candidates(self, calls_for: Sequence[str | None] | None = None) -> list[Candidate]:
        """What the filters judge, one per answer (a fresh round only: it needs the exemplars themselves); an answer
        cut at its last sentence counts as finished. `calls_for`: per answer, what its prompt calls for."""
        calls_for = calls_for or [None] * len(self.prompts)
        return [
            Candidate(prompt=p, response=r, finished=f or c, exemplars=ex, calls_for=kind)
            for p, r, f, c, ex, kind in zip(self.prompts, self.responses, self.finished, self.cut,
                                           self.exemplar_sets or (), calls_for)
        ]

    def cut_truncated(self, cut: Callable[[str], str | None], count_tokens: Callable[[str], int]) -> None:
        """The length rule: each answer that hit the token limit is cut after its last complete sentence where `cut`
        gives one (else it stays truncated, and the `truncated` filter drops it); marked `cut`, tokens recounted."""
        for k in range(self.fresh):
            if self.finished[k] or self.cut[k]:
                continue
            shorter = cut(self.responses[k])
            if shorter is not None:
                self.responses[k], self.cut[k], self.num_tokens[k] = shorter, True, count_tokens(shorter)

    def replace_answer(self, position: int, result: GenerationResult, response: str, exemplar_ids: list[str]) -> None:
        """An aligned answer found by retrying (`trl_soft.aligned`) takes the place of the answer at `position`."""
        self.raw_outputs[position], self.responses[position] = result.text, response
        self.num_tokens[position], self.finished[position] = result.num_tokens, result.finished
        self.exemplar_ids[position], self.filter_reasons[position] = exemplar_ids, None
        self.cut[position] = False

    def carry(self, earlier: Sequence[Round], limit: int | None = None) -> None:
        """`round_data='accumulate'`: the kept answers these earlier rounds generated themselves join this round's
        training data (kept, not filtered again), marked with their round. `limit` (`round_replay_share`): at most
        that many, a sample seeded by this round's seed, in their rounds' order."""
        carried = [(other, k) for other in earlier for k in other.kept if other.from_round[k] is None]
        if limit is not None and len(carried) > limit:
            chosen = set(random.Random(f"soft-replay-{self.seed}-{self.index}").sample(range(len(carried)), limit))
            carried = [pair for j, pair in enumerate(carried) if j in chosen]
        for other, k in carried:
            self.prompt_indices.append(other.prompt_indices[k])
            for name in ("prompts", "exemplar_ids", "raw_outputs", "responses", "num_tokens", "finished", "cut",
                         "retries", "calls_for"):
                getattr(self, name).append(getattr(other, name)[k])
            self.filter_reasons.append(None)
            self.from_round.append(other.index)
            if self.difficulty:
                self.difficulty.append(None)

    def check_kept(self, output_dir: Path) -> None:
        """A round with no answer left has nothing to train on: stop, naming the file to read and the fixes."""
        if not self.kept:
            raise SOFTRoundError(
                f"Round {self.index}: all {len(self.prompts)} generated answers were filtered out "
                f"({self.filter_counts}); see {self.paths.generations}. Earlier rounds are kept in {output_dir}. "
                "Loosen `filters` or raise `generation_max_new_tokens`, then rerun with --resume."
            )

    # ---- generations.jsonl ------------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One row per prompt: what `generations.jsonl` holds."""
        positions = self.train_positions
        return [
            {
                **({"sample": k % self.samples_per_prompt} if self.samples_per_prompt > 1 else {}),
                "prompt_index": self.prompt_indices[k],
                "prompt": self.prompts[k],
                "exemplar_ids": self.exemplar_ids[k],
                "raw_output": self.raw_outputs[k],
                "response": self.responses[k],
                "num_tokens": self.num_tokens[k],
                "finished": self.finished[k],
                "kept": self.filter_reasons[k] is None,
                "filter_reason": self.filter_reasons[k],
                "difficulty": self.difficulty[k] if self.difficulty else None,
                "train_position": positions.get(k),
                "cut": self.cut[k],
                "retries": self.retries[k],
                "from_round": self.from_round[k],
                "calls_for": self.calls_for[k],
            }
            for k in range(len(self.prompts))
        ]

    @classmethod
    def generated(
        cls,
        index: int,
        paths: RoundPaths,
        seed: int,
        prompt_indices: Sequence[int],
        prompts: list[str],
        exemplar_sets: list[list[Exemplar]],
        results: Sequence[GenerationResult],
        extract_response: Callable[[str], str],
        engine_sync_start: float,
        samples_per_prompt: int = 1,
    ) -> Round:
        """A round just generated: `samples_per_prompt` consecutive results per prompt, the answer cut out of each
        raw output."""
        n = samples_per_prompt
        return cls(
            index, paths, seed, [i for i in prompt_indices for _ in range(n)], [p for p in prompts for _ in range(n)],
            [[e.id for e in ex] for ex in exemplar_sets for _ in range(n)],
            raw_outputs=[r.text for r in results], responses=[extract_response(r.text) for r in results],
            num_tokens=[r.num_tokens for r in results], finished=[r.finished for r in results],
            exemplar_sets=[ex for ex in exemplar_sets for _ in range(n)], engine_sync_start=engine_sync_start,
            samples_per_prompt=n,
        )

    @classmethod
    def read(cls, index: int, paths: RoundPaths, seed: int, engine_sync_start: float = 0.0) -> Round:
        """The round an interrupted attempt generated (and filtered and ordered) already, from `generations.jsonl`."""
        return cls.from_rows(index, paths, seed, read_jsonl(paths.generations), engine_sync_start)

    def save_generations(self) -> None:
        atomic_write_jsonl(self.paths.generations, self.rows())

    def save_metrics(self) -> None:
        atomic_write_json(self.paths.metrics, self.metrics)

    @classmethod
    def from_rows(
        cls, index: int, paths: RoundPaths, seed: int, rows: list[dict[str, Any]], engine_sync_start: float = 0.0
    ) -> Round:
        """A round whose generations an interrupted attempt wrote already."""
        ranked = sorted((r["train_position"], k) for k, r in enumerate(rows) if r.get("train_position") is not None)
        return cls(
            index=index,
            paths=paths,
            seed=seed,
            prompt_indices=[r["prompt_index"] for r in rows],
            prompts=[r["prompt"] for r in rows],
            exemplar_ids=[r["exemplar_ids"] for r in rows],
            raw_outputs=[r["raw_output"] for r in rows],
            responses=[r["response"] for r in rows],
            num_tokens=[r["num_tokens"] for r in rows],
            finished=[r["finished"] for r in rows],
            filter_reasons=[r["filter_reason"] for r in rows],
            difficulty=[r["difficulty"] for r in rows],
            train_order=[k for _, k in ranked] if ranked else None,
            engine_sync_start=engine_sync_start,
            resumed=True,
            samples_per_prompt=max((r.get("sample", 0) for r in rows), default=0) + 1,
            cut=[bool(r.get("cut", False)) for r in rows],
            retries=[int(r.get("retries", 0)) for r in rows],
            from_round=[r.get("from_round") for r in rows],
            calls_for=[r.get("calls_for") for r in rows],
        )

