"""The behaviour evaluation's settings: which sets, how many items, how answers are generated, what the premise check
requires, and the metrics all of that produces.

`SOFTConfig` keeps flat `behaviour_*` fields for the command line and builds one `BehaviourSettings` from them;
`BehaviourSettings.CONFIG_FIELDS` is that mapping, and every check names the `SOFTConfig` field and the fix. `METRICS` is the one list
of behaviour metrics (set, judge criterion, direction); `ALIGNMENT_SCORE` is the documented composite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..settings import ConcernSettings

# metric -> (evaluation set, judge criterion or None for the pairwise judge, higher is better)
METRICS: dict[str, tuple[str, str | None, bool]] = {
    "refusal_harmful": ("harmful", "refused", True),
    "refusal_benign": ("benign", "refused", False),
    "admits_unknown": ("unknowable", "admits_unknown", True),
    "helpful_win_rate": ("helpful", None, True),
}
SETS = tuple(dict.fromkeys(s for s, _, _ in METRICS.values()))
# The composite: mean of refusal_harmful, 1 - refusal_benign and admits_unknown (those measured); higher is better.
ALIGNMENT_SCORE = "alignment_score"
COMPOSITE_PARTS = ("refusal_harmful", "refusal_benign", "admits_unknown")
# Metrics measured with the principle-driven prompt (principles + exemplars, as the rounds generate) carry this prefix.
FEWSHOT_PREFIX = "fewshot_"
# The Do-Not-Answer risk areas whose requests call for a refusal (the other two call for a correction or a caveat).
DNA_REFUSAL_AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")
PROMPT_STYLES = ("zero_shot", "fewshot")
# Tokens per behaviour answer: the shortest length at which the rule judge's verdicts on the zero-shot greedy answers
# labelled by reading agree with the labels as well as at 64 (benchmarks/bench_verdict_length.py).
BEHAVIOUR_MAX_NEW_TOKENS = 48
# The sets measured when `behaviour_eval` is left unset ('harmful' only where its public sets can be loaded).
DEFAULT_SETS = ("harmful", "benign", "unknowable")

def greater_is_better(metric: str) -> bool | None:
    """The direction of a behaviour metric (with or without the few-shot prefix); None when it is not one."""
    name = metric.removeprefix(FEWSHOT_PREFIX)
    if name == ALIGNMENT_SCORE:
        return True
    return METRICS[name][2] if name in METRICS else None


@dataclass(frozen=True)
class BehaviourSettings(ConcernSettings):
    """Everything the behaviour evaluation needs to know; built once from `SOFTConfig`."""

    CONFIG_FIELDS = {
        "sets": "behaviour_eval",
        "harmful_limit": "behaviour_harmful_limit",
        "limit": "behaviour_limit",
        "max_new_tokens": "behaviour_max_new_tokens",
        "fewshot": "behaviour_fewshot",
        "fewshot_every": "behaviour_fewshot_every",
        "fewshot_limit": "behaviour_fewshot_limit",
        "benign_path": "behaviour_benign_path",
        "unknowable_path": "behaviour_unknowable_path",
        "data_dir": "benchmark_data_dir",
        "require_premise": "require_premise",
        "confirmation_share": "behaviour_confirmation_share",
    }
    # Where the public sets are read from (the same items either way).
    NOT_FINGERPRINTED = frozenset({"data_dir"})

    sets: tuple[str, ...] | None = ()  # None: the default sets (DEFAULT_SETS, where they can be loaded)
    harmful_limit: int | None = None
    limit: int | None = None
    max_new_tokens: int = BEHAVIOUR_MAX_NEW_TOKENS
    fewshot: tuple[int, ...] = (0,)
    fewshot_every: int = 0
    fewshot_limit: int | None = None
    benign_path: str | None = None
    unknowable_path: str | None = None
    data_dir: str | None = None
    require_premise: bool = False
    confirmation_share: float = 0.5
    pairwise_judge: bool = field(default=False, compare=False)  # whether a pairwise judge is configured

    @classmethod
    def from_config(cls, config: Any, **extra: Any) -> BehaviourSettings:
        values = {attr: getattr(config, name) for attr, name in cls.CONFIG_FIELDS.items()}
        values["sets"] = None if values["sets"] is None else tuple(dict.fromkeys(parse_sets(values["sets"])))
        values["fewshot"] = (0,) if values["fewshot"] is None else tuple(values["fewshot"])
        return cls(**values, pairwise_judge=config.pairwise_judge != "none", **extra)

    def check(self) -> None:
        unknown = [s for s in self.sets or () if s not in SETS]
        if unknown:
            raise self.field_error("sets", f"has unknown set name(s) {unknown}; choose from {list(SETS)} (or leave it "
                                       "empty to turn the behaviour evaluation off).")
        if "helpful" in (self.sets or ()) and not self.pairwise_judge:
            raise self.field_error("sets", "asks for 'helpful' (pairwise win rate on Vicuna bench), which needs a pairwise "
                                       "judge: set `pairwise_judge` ('hf' or 'openai'), or drop 'helpful'.")
        if self.harmful_limit is not None and self.harmful_limit < 2:
            raise self.field_error("harmful_limit", f"must be >= 2 (half HarmBench, half Do-Not-Answer); got "
                                                f"{self.harmful_limit}.")
        if self.limit is not None and self.limit < 1:
            raise self.field_error("limit", f"must be >= 1 (or unset for every item); got {self.limit}.")
        if self.max_new_tokens < 1:
            raise self.field_error("max_new_tokens", f"must be >= 1; got {self.max_new_tokens}.")
        negative = [r for r in self.fewshot if r < 0]
        if negative:
            raise self.field_error("fewshot", f"lists rounds {negative}; rounds are 0 (the starting model) and up.")
        if self.fewshot_limit is not None and self.fewshot_limit < 1:
            raise self.field_error("fewshot_limit", f"must be >= 1 (or unset for every item); got {self.fewshot_limit}.")
        if not 0 <= self.confirmation_share < 1:
            raise self.field_error("confirmation_share", f"must be in [0, 1) (0: no hold-out); got "
                                                         f"{self.confirmation_share}.")
        if self.fewshot_every < 0:
            raise self.field_error("fewshot_every", f"must be >= 0 (0: never); got {self.fewshot_every}.")
        if self.require_premise and 0 not in self.fewshot:
            raise self.field_error("require_premise", "needs round 0 in `behaviour_fewshot` (the default): the premise "
                                                  "compares the principled prompt with zero-shot on the starting model.")
        if self.require_premise and not self.enabled:
            raise self.field_error("require_premise", "needs the behaviour evaluation: set `behaviour_eval` (e.g. "
                                                  "harmful,benign,unknowable).")

    @property
    def enabled(self) -> bool:
        return self.sets is None or bool(self.sets)

    @property
    def wanted(self) -> tuple[str, ...]:
        """The sets asked for (the default ones when `behaviour_eval` is unset)."""
        return DEFAULT_SETS if self.sets is None else self.sets

    def fewshot_round(self, round_index: int) -> bool:
        """Whether round `round_index` (0 = the starting model) is also answered with the principled prompt."""
        every = self.fewshot_every > 0 and round_index > 0 and round_index % self.fewshot_every == 0
        return round_index in self.fewshot or every

    def styles(self, round_index: int) -> tuple[str, ...]:
        return PROMPT_STYLES if self.fewshot_round(round_index) else PROMPT_STYLES[:1]

    def metric_direction(self, metric: str) -> bool | None:
        return greater_is_better(metric)

    def base_metrics(self) -> list[str]:
        """The behaviour metrics (zero-shot names) these settings produce, composite last."""
        names = [m for m, (s, _, _) in METRICS.items() if s in self.wanted]
        if any(m in names for m in COMPOSITE_PARTS):
            names.append(ALIGNMENT_SCORE)
        return names

    def metric_names(self) -> set[str]:
        """Every per-round metric name the behaviour evaluation adds (what `collapse_metric` may watch)."""
        names = set()
        for metric in self.base_metrics():
            # `fewshot_*` metrics are watchable only when every round has them.
            styles = [""] + ([FEWSHOT_PREFIX] if self.fewshot_every == 1 and metric != "helpful_win_rate" else [])
            for prefix in styles:
                base = prefix + metric
                names.update({base, f"{base}_low", f"{base}_high", f"{base}_se"})
        return names


def parse_sets(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A list, or a comma-separated string (`--behaviour_eval harmful,benign`); 'none' or empty turns it off."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    names = [part.strip() for item in value for part in str(item).split(",")]
    names = [n for n in names if n and n.lower() != "none"]
    return names
