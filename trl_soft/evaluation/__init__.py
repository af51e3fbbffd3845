"""Scoring models: log-likelihood of completions, and the validation-set NLL the round loop tracks."""

from .likelihood import CompletionScore, score_completions
from .validation import validation_nll, validation_nll_items

__all__ = ["CompletionScore", "score_completions", "validation_nll", "validation_nll_items"]
