"""Easy-to-hard ordering of a round's training data: difficulty scorers and the order they induce.

A difficulty scorer maps each kept (prompt, response) pair of a round to a number, higher meaning harder. Every
scorer has the same interface, `scorer(prompts, responses, context) -> scores`, so the built-in ones and a user's
callable are interchangeable:

- `length` (SOFT): response tokens. Short answers are the easy ones.
- `heuristic`: `log(1 + response tokens) + 0.5 * log(1 + prompt tokens) + 2 * rare-word rate`, where a response
  word is *rare* when the tokenizer has no single token for it (it is split into pieces). Longer answers to longer
  prompts with more unusual vocabulary come later.
- `perplexity` (SOFT+): perplexity of the response given its engraving prompt (no principles, no exemplars) under
  the model that generated it, i.e. before the round trains. Answers the model already finds natural come first.
- `column`: a number per prompt taken from a column of the prompt dataset (difficulty known in advance).
- `custom`: a callable passed to `SOFTTrainer(difficulty_scorer=...)`.

`curriculum_order` turns the scores into the training order: ascending (easy to hard) by default, optionally
descending, and optionally shuffled inside consecutive difficulty buckets of a fixed size with a fixed seed (some
variety inside a difficulty level while keeping the overall progression). The order depends only on the scores, the
direction, the bucket size and the seed, so every process computes the same one.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .evaluation.likelihood import score_completions
from .prompting import Exemplar, PromptFormatter
from .settings import ConcernSettings, setting

# Weights of the `heuristic` scorer (see the module docstring).
HEURISTIC_PROMPT_WEIGHT = 0.5
HEURISTIC_RARE_WORD_WEIGHT = 2.0
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class ScoringContext:
    """What a scorer may need besides the texts. Built by the trainer once per round."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel | None = None
    formatter: PromptFormatter | None = None
    engraving_shot: Exemplar | None = None
    batch_size: int = 8
    prompt_indices: Sequence[int] = ()  # row of each pair's prompt in the prompt dataset
    prompt_dataset: Any = None
    column: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[Sequence[str], Sequence[str], ScoringContext], Sequence[float]]


def _num_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def length_scores(prompts: Sequence[str], responses: Sequence[str], context: ScoringContext) -> list[float]:
    """Difficulty = number of response tokens."""
    return [float(_num_tokens(context.tokenizer, r)) for r in responses]


def rare_word_rate(text: str, tokenizer: PreTrainedTokenizerBase, memo: dict[str, bool] | None = None) -> float:
    """Fraction of the words of `text` that the tokenizer cannot write as one token (with a leading space)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return 0.0
    memo = {} if memo is None else memo
    rare = 0
    for word in words:
        if word not in memo:
            memo[word] = _num_tokens(tokenizer, " " + word) > 1
        rare += memo[word]
    return rare / len(words)


def heuristic_scores(prompts: Sequence[str], responses: Sequence[str], context: ScoringContext) -> list[float]:
    """Difficulty = log1p(response tokens) + 0.5 log1p(prompt tokens) + 2 * rare-word rate of the response."""
    memo = context.cache.setdefault("rare_words", {})
    scores = []
    for prompt, response in zip(prompts, responses):
        scores.append(
            math.log1p(_num_tokens(context.tokenizer, response))
            + HEURISTIC_PROMPT_WEIGHT * math.log1p(_num_tokens(context.tokenizer, prompt))
            + HEURISTIC_RARE_WORD_WEIGHT * rare_word_rate(response, context.tokenizer, memo)
        )
    return scores


def perplexity_scores(prompts: Sequence[str], responses: Sequence[str], context: ScoringContext) -> list[float]:
    """Difficulty = exp(mean NLL per token) of the response given its engraving prompt, batched, no gradients.

    The pairs are rendered exactly as the round will train on them, scored by `context.model` (the model that wrote
    them), and sharded across processes like every other scoring pass.
    """
    if context.model is None or context.formatter is None:
        raise ValueError("The `perplexity` scorer needs the model and the prompt formatter in its ScoringContext.")
    pairs = [context.formatter.engraving_texts(p, r, context.engraving_shot) for p, r in zip(prompts, responses)]
    scores = score_completions(context.model, context.tokenizer, pairs, batch_size=context.batch_size)
    return [math.exp(s.nll_per_token) for s in scores]


def column_scores(prompts: Sequence[str], responses: Sequence[str], context: ScoringContext) -> list[float]:
    """Difficulty = the value of `context.column` in the prompt dataset row each pair was generated from."""
    if context.prompt_dataset is None or context.column is None:
        raise ValueError("The `column` scorer needs the prompt dataset and `curriculum_column` in its ScoringContext.")
    values = context.prompt_dataset[context.column]
    return [float(values[i]) for i in context.prompt_indices]


SCORERS: dict[str, Scorer] = {
    "length": length_scores,
    "heuristic": heuristic_scores,
    "perplexity": perplexity_scores,
    "column": column_scores,
}


def check_scores(scores: Sequence[float], expected: int, name: str) -> list[float]:
    """Scores must be one finite number per pair; a scorer that returns anything else is a bug worth naming."""
    scores = list(scores)
    if len(scores) != expected:
        raise ValueError(f"Difficulty scorer {name!r} returned {len(scores)} scores for {expected} examples.")
    bad = [i for i, s in enumerate(scores) if not isinstance(s, (int, float)) or not math.isfinite(s)]
    if bad:
        raise ValueError(f"Difficulty scorer {name!r} returned non-finite or non-numeric scores at positions {bad[:5]}.")
    return [float(s) for s in scores]


def curriculum_order(
    scores: Sequence[float], descending: bool = False, bucket_size: int | None = None, seed: int = 0
) -> list[int]:
    """Indices in training order: sorted by score (ties keep their original order), then, with `bucket_size`, each
    consecutive run of `bucket_size` indices shuffled with a generator seeded by `seed`."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if descending else scores[i], i))
    if bucket_size and bucket_size > 1:
        rng = random.Random(seed)
        for start in range(0, len(order), bucket_size):
            bucket = order[start : start + bucket_size]
            rng.shuffle(bucket)
            order[start : start + bucket_size] = bucket
    return order


CURRICULA = ("none", *SCORERS, "custom")
CURRICULUM_DIRECTIONS = ("ascending", "descending")


@dataclass(frozen=True)
class CurriculumSettings(ConcernSettings):
    """Which difficulty scorer orders each round's training data, in which direction, with what bucket shuffling."""

    NOT_FINGERPRINTED = frozenset({"batch_size"})

    name: str = setting(
        "length",
        "Difficulty scorer that orders each round's training data (no shuffling): 'length' (default, SOFT: "
        "response tokens), 'heuristic' (log response tokens + 0.5 log prompt tokens + 2 x rare-word rate), "
        "'perplexity' (SOFT+: perplexity of the response under the model that wrote it, scored before the round "
        "trains), 'column' (a number per prompt from `curriculum_column` of the prompt dataset), 'custom' (the "
        "callable passed as `SOFTTrainer(difficulty_scorer=...)`) or 'none' (the usual shuffled order).",
        name="curriculum",
    )
    direction: str = setting(
        "ascending", "'ascending' (default: easy to hard, lowest score first) or 'descending' (hard to easy).",
        name="curriculum_direction",
    )
    bucket_size: int | None = setting(
        None,
        "Shuffle (seeded, the same on every process) inside consecutive buckets of this many examples of "
        "the sorted order: variety within a difficulty level, easy to hard across levels. Default: no shuffling.",
        name="curriculum_bucket_size",
    )
    column: str | None = setting(
        None, "Prompt dataset column with a numeric difficulty per prompt; required by `curriculum='column'`.",
        name="curriculum_column",
    )
    batch_size: int = setting(
        16, "Pairs per forward pass when the 'perplexity' scorer scores a round (no gradients).",
        name="curriculum_batch_size",
    )

    def check(self) -> None:
        self.check_choice(
            "name", CURRICULA, "Use 'length' for easy-to-hard by answer length, 'perplexity' for SOFT+, or 'none' to "
            "keep the usual shuffled order."
        )
        self.check_choice("direction", CURRICULUM_DIRECTIONS)
        if self.bucket_size is not None and self.bucket_size < 1:
            raise self.field_error("bucket_size", f"must be >= 1 (or unset for no shuffling); got {self.bucket_size}.")
        if self.name == "column" and not self.column:
            raise ValueError(
                "`curriculum='column'` needs `curriculum_column`: the prompt dataset column that holds each prompt's "
                "difficulty."
            )
        if self.batch_size < 1:
            raise self.field_error("batch_size", f"must be >= 1; got {self.batch_size}.")

    @property
    def on(self) -> bool:
        return self.name != "none"

    def scorer(self, prompts: Any, custom: Scorer | None) -> Scorer | None:
        """The run's difficulty scorer, after checking that what it reads exists (`prompts`: the prompt dataset)."""
        if self.name == "custom":
            if custom is None or not callable(custom):
                raise ValueError(
                    "`curriculum='custom'` needs `SOFTTrainer(difficulty_scorer=...)`: a callable "
                    "(prompts, responses, context) -> one difficulty per pair (higher = harder)."
                )
            return custom
        if custom is not None:
            raise ValueError(
                f"A `difficulty_scorer` was passed but `curriculum={self.name!r}`; set `curriculum='custom'` to use it."
            )
        if self.name == "column":
            if self.column not in prompts.column_names:
                raise ValueError(
                    f"`curriculum_column={self.column!r}` is not a column of the prompt dataset (columns: "
                    f"{prompts.column_names}). Add a numeric difficulty column or pick another `curriculum`."
                )
            values = prompts[self.column]
            bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or isinstance(v, bool)]
            if bad:
                raise ValueError(
                    f"`curriculum_column={self.column!r}` must hold a number for every prompt; rows {bad[:5]} do not."
                )
        return SCORERS.get(self.name)

    def rank(
        self, scorer: Scorer, prompts: Sequence[str], responses: Sequence[str], context: ScoringContext, seed: int
    ) -> tuple[list[float], list[int]]:
        """Each pair's difficulty and the training order they induce (positions into the pairs)."""
        name = self.name if self.name != "custom" else getattr(scorer, "__name__", "custom")
        scores = check_scores(scorer(prompts, responses, context), len(prompts), name)
        return scores, curriculum_order(scores, self.direction == "descending", self.bucket_size, seed)
