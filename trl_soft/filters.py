"""Quality filters for self-generated answers.

Each filter is a small named function `(candidate, settings) -> bool` that says whether to drop the answer. They run
in a fixed order and the first that fires names the reason, so every dropped answer carries exactly one reason and
the per-reason counts add up to the number dropped. Empty answers are always dropped (reason `empty`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .judges.rules import correction_evidence, refusal_evidence, risky_words
from .prompting import PLAIN_ASSISTANT_TAG, PLAIN_USER_TAG, Exemplar
from .settings import ConcernSettings, setting

# What a prompt calls for (`Candidate.calls_for`, from its category column: `aligned.py`); None: an ordinary answer.
REFUSAL, ADMISSION, CORRECTION = "refusal", "admission", "correction"

_WORD = re.compile(r"\w+(?:'\w+)?")

# Markers that show the model went on to write the next dialogue turn (the exemplar layout leaking into the answer).
_TURN_LEAKS = (PLAIN_USER_TAG, PLAIN_ASSISTANT_TAG, "\nUser:", "\nAssistant:", "\nHuman:")



@dataclass
class Candidate:
    """A self-generated answer and what the filters need to judge it."""

    prompt: str
    response: str
    finished: bool = True
    exemplars: Sequence[Exemplar] = field(default_factory=tuple)
    violates_principles: bool = False  # set by the principle gate (`behaviour/gate.py`), which judges in batches
    invents_facts: bool = False  # set by the gate too: no admission where the request calls for one
    # What the prompt calls for by its column (`aligned.kind`: 'refusal', 'admission', 'correction' or None). An answer
    # that gives the refusal, admission or correction asked for is the answer the gate wants: no filter below drops it
    # for being a refusal or for sounding like the exemplar that showed one.
    calls_for: str | None = None


TRUNCATION_RULES = ("cut", "prefix", "drop")
# An answer that ends at a sentence: the last '.', '!' or '?' (maybe closed by a quote or bracket) before a space or
# the end, or a line that ends a list item or a code block.
_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s|$)|\n(?=\s*\n)|```\s*$""")


def last_sentence(text: str, min_words: int, keep_share: float = 0.5) -> str | None:
    """`text` cut after its last complete sentence, or None when that keeps fewer than `min_words` words or less
    than `keep_share` of its words (the length rule for truncated answers, `filter_truncation='cut'`)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    cut = text[: ends[-1]].rstrip()
    kept, total = len(words(cut)), len(words(text))
    if kept < min_words or kept < keep_share * total:
        return None
    return cut if not cut.endswith("```") or cut.count("```") % 2 == 0 else None


def words(text: str) -> list[str]:
    # Not the diagnostics' whitespace tokens (`diagnostics._words`, which says why the two differ).
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def ngram_overlap(text: str, reference: str, n: int = 5) -> float:
    """Share of `text`'s word n-grams that also occur in `reference`."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    reference_grams = set(ngrams(words(reference), n))
    return sum(g in reference_grams for g in grams) / len(grams)


def too_short(candidate: Candidate, settings: FilterSettings) -> bool:
    """Fewer than `min_words` words: nothing to learn from."""
    return len(words(candidate.response)) < settings.min_words


def truncated(candidate: Candidate, settings: FilterSettings) -> bool:
    """Hit the token limit before ending: training on it would teach the model to stop mid-sentence."""
    return not candidate.finished


def repetition(candidate: Candidate, settings: FilterSettings) -> bool:
    """A degenerate loop: too many repeated word 4-grams, or the same line three times or more."""
    if repeated_ngram_fraction(candidate.response) > settings.max_repeated_ngram_fraction:
        return True
    lines = [line.strip().lower() for line in candidate.response.splitlines() if len(line.strip()) > 10]
    return bool(lines) and Counter(lines).most_common(1)[0][1] >= 3


def gives_what_is_asked(candidate: Candidate) -> bool:
    """The answer refuses a request that calls for a refusal, admits where one calls for an admission, or pushes back
    on a false premise where one calls for a correction."""
    if candidate.calls_for == REFUSAL:
        return not candidate.violates_principles
    if candidate.calls_for == CORRECTION:
        return correction_evidence(candidate.prompt, candidate.response) is not None
    return candidate.calls_for == ADMISSION and not candidate.invents_facts


def exemplar_copy(candidate: Candidate, settings: FilterSettings) -> bool:
    """Copies an in-context exemplar's answer, or writes the next dialogue turn itself (a refusal or admission the
    prompt calls for may sound like the exemplar that showed one: only the turn markers drop it)."""
    if any(marker in candidate.response for marker in _TURN_LEAKS):
        return True
    if gives_what_is_asked(candidate):
        return False
    return any(
        ngram_overlap(candidate.response, e.response) > settings.max_exemplar_overlap for e in candidate.exemplars
    )


def principle_gate(candidate: Candidate, settings: FilterSettings) -> bool:
    """Complies with a harmful request (judged by the principle gate before filtering)."""
    return candidate.violates_principles


def honesty_gate(candidate: Candidate, settings: FilterSettings) -> bool:
    """Answers a request that calls for an admission (it cannot be known) with invented facts instead."""
    return candidate.invents_facts


def premise_gate(candidate: Candidate, settings: FilterSettings) -> bool:
    """Answers a request built on a false premise (its column calls for a correction) without pushing back on it:
    "Why do we only use 10% of our brains?" -> "It's all about our brains' ability to adapt ...". Training on such
    answers teaches the misconception itself. The rule judge's phrases decide (`judges.rules.correction_evidence`:
    "a common myth", "isn't true", "Bats aren't blind"), whatever `behaviour_judge` is."""
    return candidate.calls_for == CORRECTION and not gives_what_is_asked(candidate)


def templated_refusal(candidate: Candidate, settings: FilterSettings) -> bool:
    """A stock refusal of a request with no sign of harm: over-refusal should not be trained in. A request whose
    column calls for a refusal or an admission is not one (the column says so before any word list), nor a correction
    that opens with an apology ("I'm sorry, but that's a myth")."""
    if candidate.calls_for in (REFUSAL, ADMISSION) or gives_what_is_asked(candidate):
        return False
    return refusal_evidence(candidate.response) is not None and not risky_words(candidate.prompt)


FilterFn = Callable[[Candidate, "FilterSettings"], bool]

FILTERS: dict[str, FilterFn] = {
    "principle_gate": principle_gate,
    "honesty_gate": honesty_gate,
    "premise_gate": premise_gate,
    "too_short": too_short,
    "truncated": truncated,
    "repetition": repetition,
    "exemplar_copy": exemplar_copy,
    "templated_refusal": templated_refusal,
}


FILTER_NAMES = tuple(FILTERS)


@dataclass(frozen=True)
class FilterSettings(ConcernSettings):
    """Which filters run, in order, and their thresholds; the principle gate's column of harmful-request marks."""

    names: tuple[str, ...] = setting(
        None,
        f"Quality filters to apply, by name. Default: all of {', '.join(FILTER_NAMES)}. Pass an empty "
        "list to keep every non-empty answer.",
        name="filters",
    )
    min_words: int = setting(
        3, "`too_short`: answers with fewer words than this are dropped.",
        name="filter_min_words",
    )
    max_repeated_ngram_fraction: float = setting(
        0.3,
        "`repetition`: drop answers in which more than this fraction of word 4-grams are repeats "
        "(degenerate loops).",
        name="filter_max_repeated_ngram_fraction",
    )
    max_exemplar_overlap: float = setting(
        0.6,
        "`exemplar_copy`: drop answers whose word 5-grams overlap an in-context exemplar's answer by more "
        "than this fraction, or that continue the dialogue with a new turn.",
        name="filter_max_exemplar_overlap",
    )
    gate_column: str | None = setting(
        None,
        "Prompt dataset column that marks harmful requests for the `principle_gate` filter (e.g. the demo's "
        "'category'). Default: the `behaviour_judge` decides which requests are harmful.",
        name="principle_gate_column",
    )
    gate_values: tuple[str, ...] = setting(
        ("harmful",), "Values of `principle_gate_column` that mark a harmful request.",
        name="principle_gate_values",
    )
    honesty_values: tuple[str, ...] = setting(
        ("unknowable",),
        "Values of `principle_gate_column` that mark a request calling for an admission (the answer cannot "
        "be known): the gate drops answers that do not admit it (counted as `honesty_gate`).",
        name="principle_gate_honesty_values",
    )
    truncation: str = setting(
        "prefix",
        "The length rule for answers that hit `generation_max_new_tokens`: 'prefix' (default: cut after the "
        "last complete sentence when that keeps at least half the words, marked `cut` in generations.jsonl, and "
        "trained as the start of an answer: the end-of-turn after it is left out of the loss, so the model is not "
        "taught to stop where the budget stopped it; needs `packing=False`), 'cut' (cut likewise, trained as a "
        "finished answer) or 'drop' (the `truncated` filter drops them, which teaches ever shorter answers "
        "round after round).",
        name="filter_truncation",
    )

    @property
    def cuts(self) -> bool:
        """Truncated answers are cut at their last complete sentence (`filter_truncation` 'cut' or 'prefix')."""
        return self.truncation != "drop"

    def fill_unset(self) -> None:
        if self.names is None:  # `filters` left unset: every filter
            object.__setattr__(self, "names", FILTER_NAMES)
        super().fill_unset()

    def check(self) -> None:
        unknown = sorted(set(self.names) - set(FILTERS))
        if unknown:
            raise self.field_error(
                "names", f"has unknown filter name(s) {unknown}; the available filters are {list(FILTER_NAMES)}."
            )
        if self.gate_column is not None and not self.gate_values:
            raise self.field_error(
                "gate_values", "is empty, so `principle_gate_column` would mark no request as harmful: give the "
                "column's values that mark one (e.g. harmful)."
            )
        self.check_choice("truncation", TRUNCATION_RULES)
        if self.min_words < 1:
            raise self.field_error("min_words", f"must be >= 1; got {self.min_words}.")
        for attr in ("max_repeated_ngram_fraction", "max_exemplar_overlap"):
            value = getattr(self, attr)
            if not 0 < value <= 1:
                raise self.field_error(attr, f"must be in (0, 1]; got {value}.")

    @property
    def gate_on(self) -> bool:
        return "principle_gate" in self.names

    @property
    def premise_on(self) -> bool:
        """The premise gate reads what the prompt column calls for (`aligned_prompt_values` that mark neither a
        harmful nor an unknowable request, e.g. the demo's 'false-premise')."""
        return "premise_gate" in self.names and self.gate_column is not None

    @property
    def honesty_on(self) -> bool:
        """The honesty gate reads the prompt column's marks (`principle_gate_column`, `..._honesty_values`)."""
        return "honesty_gate" in self.names and self.gate_column is not None and bool(self.honesty_values)

    def verdicts(self, candidates: Sequence[Candidate]) -> list[str | None]:
        """The reason each candidate is dropped (None = kept), with these settings' filters in their order."""
        return apply_filters(candidates, self.names, self)[0]


def filter_reason(candidate: Candidate, names: Sequence[str], settings: FilterSettings) -> str | None:
    """The name of the first filter that drops `candidate` (`empty` before all), or None to keep it."""
    if not candidate.response.strip():
        return "empty"
    for name in names:
        if FILTERS[name](candidate, settings):
            return name
    return None


def apply_filters(
    candidates: Sequence[Candidate], names: Sequence[str], settings: FilterSettings
) -> tuple[list[str | None], Counter]:
    """Reasons per candidate (None = kept) and how many each reason dropped."""
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"`filters`: unknown filter name(s) {unknown}; available: {list(FILTERS)}.")
    reasons = [filter_reason(c, names, settings) for c in candidates]
    return reasons, Counter(r for r in reasons if r is not None)
