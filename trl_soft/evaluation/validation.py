"""Validation NLL: how likely the model finds the reference answers of a held-out set, per token.

The references are good aligned answers, so a falling NLL means the model is moving toward them; a rising one after
several rounds is the late-round collapse the SOFT paper warns about. The prompts are rendered as engraving prompts
(no principles, no exemplars), the way the model will be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..data import ValidationPair
from ..prompting import PromptFormatter
from ..settings import ConcernSettings, setting
from .likelihood import score_completions

VALIDATION_METRIC = "validation_nll"


@dataclass(frozen=True)
class ValidationSettings(ConcernSettings):
    """The held-out set scored after every round, and whether the starting model is scored first (round 0)."""

    NOT_FINGERPRINTED = frozenset({"batch_size"})
    LOWER_IS_BETTER = frozenset({VALIDATION_METRIC})

    path: str | None = setting(
        None,
        "JSONL validation set of {'prompt', 'reference'} pairs, scored after every round (mean NLL of "
        "the references). Default: the held-out set shipped in trl_soft/assets/validation.jsonl. 'none' skips it.",
        name="validation_path",
    )
    batch_size: int = setting(8, "Batch size for validation scoring.", name="validation_batch_size")
    evaluate_start: bool = setting(
        True,
        "Score the starting model (round 0) on the validation set and benchmarks before round 1, as the "
        "baseline of the round table. Turn off when the baseline is known already.",
    )

    def check(self) -> None:
        if self.batch_size < 1:
            raise self.field_error("batch_size", f"must be >= 1; got {self.batch_size}.")

    @property
    def enabled(self) -> bool:
        return (self.path or "").lower() != "none"

    def metric_names(self) -> set[str]:
        return {VALIDATION_METRIC} if self.enabled else set()


def validation_nll_items(
    model: PreTrainedModel, formatter: PromptFormatter, pairs: Sequence[ValidationPair], batch_size: int = 8
) -> tuple[float, list[float]]:
    """Mean negative log-likelihood per reference token (token-weighted over the whole set), and each pair's own
    per-token NLL (what a paired comparison of two rounds needs)."""
    if not pairs:
        raise ValueError("validation_nll needs at least one validation pair.")
    texts = [formatter.engraving_texts(p.prompt, p.reference) for p in pairs]
    scores = score_completions(model, formatter.tokenizer, texts, batch_size=batch_size)
    total = -sum(s.log_likelihood for s in scores) / sum(s.num_tokens for s in scores)
    return total, [s.nll_per_token for s in scores]


def validation_nll(
    model: PreTrainedModel, formatter: PromptFormatter, pairs: Sequence[ValidationPair], batch_size: int = 8
) -> float:
    """Mean negative log-likelihood per reference token (token-weighted over the whole set)."""
    return validation_nll_items(model, formatter, pairs, batch_size)[0]
