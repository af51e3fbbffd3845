"""Collapse diagnostics: how sharp and how varied the model's own answers are, round after round.

The SOFT paper explains late-round collapse by a *sharper output distribution*: trained again and again on its own
samples, the model grows more confident and less varied. These numbers make that visible on a fixed set of prompts
(the validation prompts), sampled with the round's generation settings and a fixed seed so rounds are comparable:

- `sample_entropy`: mean entropy (nats) of the model's next-token distribution over the tokens it sampled;
  falls as the distribution sharpens.
- `sample_distinct_1`, `sample_distinct_2`: distinct word unigrams / bigrams over all samples divided by their
  total (Li et al., 2016); falls as answers repeat themselves and each other.
- `sample_self_bleu`: mean BLEU-4 of each sample against all the others as references (Zhu et al., 2018); rises as
  answers become alike.
- `sample_tokens`: mean answer length in tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from accelerate import Accelerator
from transformers import PreTrainedModel

from ..filters import ngrams
from ..generation import GenerationResult, GenerationSettings, generate_completions
from ..prompting import PromptFormatter
from ..settings import ConcernSettings, setting
from .likelihood import score_completions

DIAGNOSTIC_METRICS = ("sample_entropy", "sample_distinct_1", "sample_distinct_2", "sample_self_bleu", "sample_tokens")

__all__ = ["DIAGNOSTIC_METRICS", "DiagnosticsSettings", "collapse_diagnostics", "distinct_n", "self_bleu", "sentence_bleu", "text_diversity"]


@dataclass(frozen=True)
class DiagnosticsSettings(ConcernSettings):
    """How many validation prompts the model answers after every round for the collapse diagnostics, and how long."""

    LOWER_IS_BETTER = frozenset({"sample_self_bleu"})

    num_prompts: int = setting(
        16,
        "Validation prompts the model answers after every round for the collapse diagnostics (token "
        "entropy, distinct-1/2, self-BLEU, answer length). 0 turns them off.",
        name="diagnostics_num_prompts",
    )
    max_new_tokens: int = setting(128, "Maximum new tokens per diagnostic answer.", name="diagnostics_max_new_tokens")

    def check(self) -> None:
        if self.num_prompts < 0:
            raise self.field_error("num_prompts", f"must be >= 0 (0 = off); got {self.num_prompts}.")
        if self.max_new_tokens < 1:
            raise self.field_error("max_new_tokens", f"must be >= 1; got {self.max_new_tokens}.")

    def metric_names(self) -> set[str]:
        """The diagnostics' metrics (they answer validation prompts: `SOFTSettings` drops them without a set)."""
        return set(DIAGNOSTIC_METRICS) if self.num_prompts > 0 else set()


def _words(text: str) -> list[str]:
    # Whitespace tokens on purpose, not `filters.words` (a regex that drops punctuation): distinct-n and self-BLEU
    # are conventionally computed on whitespace tokens, and changing it would change every recorded diagnostic.
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams across all texts divided by the number of n-grams (0 when there are none)."""
    grams = [g for text in texts for g in ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """BLEU of one tokenised hypothesis against tokenised references: clipped n-gram precisions up to `max_n`,
    geometric mean, brevity penalty against the closest reference length. A precision with no match counts as
    0.1 / (number of hypothesis n-grams) (smoothing "method 1" of Chen & Cherry, 2014) so short texts do not score 0."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        total = sum(counts.values())
        if total == 0:
            return 0.0
        max_ref: Counter = Counter()
        for reference in references:
            for gram, count in Counter(ngrams(reference, n)).items():
                max_ref[gram] = max(max_ref[gram], count)
        clipped = sum(min(count, max_ref[gram]) for gram, count in counts.items())
        log_precision += math.log(clipped / total if clipped else 0.1 / total) / max_n
    hyp_len = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda length: (abs(length - hyp_len), length))
    brevity = 1.0 if hyp_len > closest else math.exp(1 - closest / hyp_len)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (needs at least two non-empty texts, else 0)."""
    tokenised = [_words(t) for t in texts if t.strip()]
    if len(tokenised) < 2:
        return 0.0
    scores = [
        sentence_bleu(hyp, tokenised[:i] + tokenised[i + 1 :], max_n) for i, hyp in enumerate(tokenised)
    ]
    return sum(scores) / len(scores)


def text_diversity(texts: Sequence[str]) -> dict[str, float]:
    """The text-only diagnostics of a set of answers."""
    return {
        "sample_distinct_1": distinct_n(texts, 1),
        "sample_distinct_2": distinct_n(texts, 2),
        "sample_self_bleu": self_bleu(texts),
    }


def collapse_diagnostics(
    model: PreTrainedModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    settings: GenerationSettings,
    accelerator: Accelerator | None = None,
    batch_size: int = 8,
    generate: Callable[[list[str], GenerationSettings, str], list[GenerationResult]] | None = None,
) -> dict[str, float]:
    """Sample one answer per prompt from the engraving prompt (how the trained model is used), then measure them.

    `generate(texts, settings, desc)` replaces the default HF generation (the trainer passes its own backend)."""
    if not prompts:
        raise ValueError("collapse_diagnostics needs at least one prompt.")
    texts = [formatter.engraving_prompt(p) for p in prompts]
    if generate is None:
        results = generate_completions(model, formatter.tokenizer, texts, settings, accelerator, desc="Diagnostics")
    else:
        results = generate(texts, settings, "Diagnostics")
    answers = [formatter.extract_response(r.text) for r in results]
    scored = [(t, a) for t, a in zip(texts, answers) if a]
    entropy = float("nan")
    if scored:
        scores = score_completions(model, formatter.tokenizer, scored, batch_size=batch_size, with_entropy=True)
        entropy = sum(s.entropy for s in scores) / max(sum(s.num_tokens for s in scores), 1)
    return {
        "sample_entropy": entropy,
        **text_diversity(answers),
        "sample_tokens": sum(r.num_tokens for r in results) / len(results),
    }
