"""Validation NLL: how likely the model finds the reference answers of a held-out set, per token.

The references are good aligned answers, so a falling NLL means the model is moving toward them; a rising one after
several rounds is the late-round collapse the SOFT paper warns about. The prompts are rendered as engraving prompts
(no principles, no exemplars), the way the model will be used.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel

from ..data import ValidationPair
from ..prompting import PromptFormatter
from .likelihood import score_completions


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
