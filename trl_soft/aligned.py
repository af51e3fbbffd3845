"""Aligned data: the prompts that call for a refusal, an admission or a premise correction get a share of every round,
and the model's own aligned answer: a refusal, an admission, or an answer that pushes back on the false premise.

Why: the principle and honesty gates can only drop answers. A small model's principled prompt rarely refuses or admits,
so without this every such answer is dropped and each round fine-tunes on compliance alone, which erodes the refusals
the model had (Qi et al. 2023). Two levers, each its own setting:

- **The mix** (`aligned_prompt_share`): each round draws that share of its prompts from the rows whose prompt-dataset
  column (`principle_gate_column`, e.g. the demo's `category`) has one of `aligned_prompt_values`, the rest from the
  other rows. Without a column, the rule judge's harmful-request words mark the rows instead.
- **Retries** (`aligned_retry_budget`): a prompt marked as calling for a refusal (`principle_gate_values`), an
  admission (`principle_gate_honesty_values`) or a correction (the other `aligned_prompt_values`, with the
  `premise_gate` filter on) whose samples all failed its gate is sampled again, `aligned_retry_batch`
  samples at a time (more when so few prompts are left that a pass would not fill `generation_batch_size`), up to
  the budget, and its first answer that passes the gate and every filter is kept. The retry
  prompt (`aligned_retry_prompt`) is the model's own: by default the pool's exemplars of the same kind as chat turns
  before the request, without principles (`same_kind`; on the embedded model these refused harmful requests more
  often than zero-shot or the principled prompt, as measured in issue 26); `zero_shot` is the bare request; `principled` the round's own prompt.
  Nothing is ever written for the model: a prompt that finds no aligned answer within the budget keeps none.
- **The screen** (`aligned_retry_screen_tokens`): a refusal or a correction shows in an answer's opening words, so a
  retry for one first draws that many tokens, and only the samples that already show it (by the rule judge's
  phrases) are continued to the full length; the many that comply stop there.

`AlignedSettings` is this concern's settings (built once by `SOFTConfig`); `AlignedData` does the work for a run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .filters import ADMISSION, CORRECTION, REFUSAL, Candidate
from .generation import GenerationResult, GenerationSettings
from .judges.rules import correction_evidence, refusal_evidence, risky_words
from .prompting import Exemplar, PromptFormatter
from .settings import ConcernSettings, setting

RETRY_PROMPTS = ("same_kind", "zero_shot", "principled")
# The round metrics: prompts that call for a refusal or an admission, how many got an aligned answer, the extra
# samples that cost, and the prompts of the mix.
# Prompts built on a false premise are counted apart (`corrections_needed`, `corrections_kept`).
METRIC_NAMES = ("aligned_needed", "aligned_kept", "aligned_retry_samples", "aligned_prompts", "corrections_needed",
                "corrections_kept")

Generate = Callable[[list[str], GenerationSettings, str], list[GenerationResult]]


@dataclass(frozen=True)
class AlignedSettings(ConcernSettings):
    """The share of each round's prompts that call for aligned behaviour, and the retries that find its answers."""

    prompt_share: float = setting(
        0.5,
        "Share of each round's prompts drawn from the rows that call for a refusal, an admission or a "
        "premise correction (`principle_gate_column` in `aligned_prompt_values`; without a column, rows with the "
        "rule judge's harmful-request words), so no round trains on compliance alone; 0 turns the mix off "
        "(docs/behaviour.md, 'Aligned data'; 0.5 chosen there, on the selection items).",
        name="aligned_prompt_share",
    )
    prompt_values: tuple[str, ...] = setting(
        ("harmful", "unknowable", "false-premise"),
        "Values of `principle_gate_column` whose rows make up `aligned_prompt_share`.",
        name="aligned_prompt_values",
    )
    retry_budget: int = setting(
        16,
        "Extra samples, at most, per prompt that calls for a refusal, an admission or a premise correction and "
        "whose answers all failed the gate: it is sampled again until one passes the gate and every filter (the model's own answer; "
        "none is ever written for it). 0: no retries.",
        name="aligned_retry_budget",
    )
    retry_batch: int = setting(
        4,
        "Samples drawn per failing prompt in each retry pass, at least: when too few prompts are left to fill "
        "`generation_batch_size`, each draws more (up to the budget).",
        name="aligned_retry_batch",
    )
    retry_exemplars: int | None = setting(
        None,
        "Exemplars of the prompt's own category a 'same_kind' retry shows as chat turns (fewer where the pool has "
        "fewer); unset: `num_exemplars` (at least 1). On the demo, 3 made the embedded model refuse more retry samples "
        "than its 2, but the rounds were no better on the selection items (docs/behaviour.md, 'The third pass').",
        name="aligned_retry_exemplars",
    )
    screen_tokens: int = setting(
        40,
        "Retries for a refusal or a premise correction first draw this many tokens, and only the samples that already "
        "show one in them (the rule judge's phrases, which look at an answer's opening: `judges.rules`) are continued "
        "to `generation_max_new_tokens`, so the samples that comply stop early. Admissions are not screened (an "
        "answer may admit late), nor anything where `behaviour_judge` is not 'rules' (the gate's judge decides). 0: "
        "every retry sample runs to the full length. On the embedded model, every kept refusal showed its phrase "
        "within 40 tokens and 96 percent of the corrections (docs/behaviour.md, 'The sixth pass').",
        name="aligned_retry_screen_tokens",
    )
    retry_prompt: str = setting(
        "same_kind",
        "How retries ask: 'same_kind' (the pool's exemplars of the prompt's own category as chat turns, no "
        "principles), 'zero_shot' (the bare request) or 'principled' (the round's own prompt).",
        name="aligned_retry_prompt",
    )

    def check(self) -> None:
        if not 0 <= self.prompt_share <= 1:
            raise self.field_error("prompt_share", f"must be in [0, 1] (0 turns the mix off); got {self.prompt_share}.")
        if self.retry_budget < 0:
            raise self.field_error("retry_budget", f"must be >= 0 (0 turns retries off); got {self.retry_budget}.")
        if self.retry_batch < 1:
            raise self.field_error("retry_batch", f"must be >= 1; got {self.retry_batch}.")
        if self.screen_tokens < 0:
            raise self.field_error("screen_tokens", f"must be >= 0 (0 turns the screen off); got {self.screen_tokens}.")
        if self.retry_exemplars is not None and self.retry_exemplars < 1:
            raise self.field_error("retry_exemplars", f"must be >= 1; got {self.retry_exemplars}.")
        self.check_choice("retry_prompt", RETRY_PROMPTS)

    def metric_names(self) -> set[str]:
        return set(METRIC_NAMES)

    def marks(self, values: Sequence[object] | None, prompts: Sequence[str]) -> list[bool]:
        """Which prompt rows belong to the aligned share of the mix: by the column's values, else by the rule judge's
        harmful-request words."""
        if values is not None:
            return [str(v) in self.prompt_values for v in values]
        return [bool(risky_words(p)) for p in prompts]

    def mix(self, rounds: list[list[int]], marks: Sequence[bool], seed: int) -> list[list[int]]:
        """The rounds' prompt rows redrawn so that each round holds `prompt_share` of marked rows (as many as there
        are, for disjoint rounds). Rounds keep their sizes; a round's rows are shuffled together, seeded."""
        if self.prompt_share == 0 or not rounds or not any(marks):
            return rounds
        used = list(dict.fromkeys(i for r in rounds for i in r))
        reuse = len(used) < sum(len(r) for r in rounds)  # `prompt_schedule='reuse'`: the same rows every round
        rng = random.Random(f"soft-mix-{seed}")
        pool = list(range(len(marks)))
        rng.shuffle(pool)
        marked = [i for i in pool if marks[i]]
        other = [i for i in pool if not marks[i]]
        mixed: list[list[int]] = []
        for t, rows in enumerate(rounds):
            if reuse and mixed:
                mixed.append(list(mixed[0]))
                continue
            size = len(rows)
            want = round(self.prompt_share * size)
            available = len(marked) if reuse else len(marked) // len(rounds)
            others = len(other) if reuse else len(other) // len(rounds)
            take = min(max(want, size - others), available)
            offset_m, offset_o = (0, 0) if reuse else (t * take, t * (size - take))
            chosen = marked[offset_m: offset_m + take] + other[offset_o: offset_o + size - take]
            if len(chosen) < size:  # not enough other rows: fill with more marked ones
                extra = [i for i in marked if i not in chosen]
                chosen += extra[: size - len(chosen)]
            rng.shuffle(chosen)
            mixed.append(chosen)
        return mixed

    def kind(self, value: object, refusal_values: Sequence[str], admission_values: Sequence[str],
             corrections: bool = True) -> str | None:
        """What a prompt's column value calls for: a refusal, an admission, a correction (a value of the mix that is
        neither, where `corrections`: the premise gate is on), or nothing."""
        text = str(value)
        if text in refusal_values:
            return REFUSAL
        if text in admission_values:
            return ADMISSION
        return CORRECTION if corrections and text in self.prompt_values else None


class AlignedData:
    """The aligned data of one run: what each prompt calls for, and the retries that find the model's own aligned
    answers for the prompts whose samples all failed."""

    def __init__(self, settings: AlignedSettings, filters, pool: Sequence[Exemplar], num_exemplars: int, seed: int,
                 rule_judge: bool = True):
        """`filters`: the run's `FilterSettings` (the gate's column values; a side whose gate is off calls for
        nothing, as nothing could judge it); `num_exemplars`: the run's k, what a retry shows unless
        `retry_exemplars` is set; `rule_judge`: the gate judges by the rule judge's phrases (`behaviour_judge:
        rules`), which the screen reads."""
        self.settings, self.pool, self.seed = settings, list(pool), seed
        self.screen = settings.screen_tokens if rule_judge else 0
        self.k = settings.retry_exemplars if settings.retry_exemplars is not None else max(1, num_exemplars)
        self.refusal_values = filters.gate_values if filters.gate_on else ()
        self.admission_values = filters.honesty_values if filters.honesty_on else ()
        # A correction is asked only where the premise gate can judge one, and never of a harmful or unknowable
        # request whose own gate is off.
        self.corrections = filters.premise_on
        self.not_corrections = {*filters.gate_values, *filters.honesty_values}

    @classmethod
    def for_run(cls, settings, pool: Sequence[Exemplar], seed: int) -> AlignedData:
        """From a run's settings (`SOFTConfig.settings`: its aligned, filter, prompt and judge concerns)."""
        return cls(settings.aligned, settings.filters, pool, settings.prompts.num_exemplars, seed,
                   rule_judge=settings.judges.pointwise == "rules")

    def kinds(self, values: Sequence[object] | None, prompts: Sequence[str]) -> list[str | None]:
        """Per prompt, what it calls for (`REFUSAL`, `ADMISSION`, `CORRECTION` or None): by its column value, else a
        refusal where the rule judge finds harmful-request words (and the principle gate is on)."""
        if values is None:
            return [REFUSAL if self.refusal_values and risky_words(p) else None for p in prompts]
        return [self.settings.kind(v, self.refusal_values, self.admission_values,
                                   self.corrections and str(v) not in self.not_corrections) for v in values]

    def exemplars(self, category: str, round_index: int, prompt_index: int, attempt: int) -> list[Exemplar]:
        """Pool exemplars of the prompt's own kind (its column value), seeded per prompt and attempt."""
        same = [e for e in self.pool if e.category == category]
        if not same:
            return []
        rng = random.Random(f"soft-aligned-{self.seed}-{round_index}-{prompt_index}-{attempt}")
        return rng.sample(same, min(self.k, len(same)))

    def retry_prompt(self, formatter: PromptFormatter, prompt: str, exemplars: Sequence[Exemplar],
                     principled: Sequence[Exemplar]) -> str:
        style = self.settings.retry_prompt
        if style == "principled":
            return formatter.generation_prompt(prompt, principled)
        return formatter.turns_prompt(prompt, exemplars if style == "same_kind" else ())

    def fill(
        self,
        round_,
        values: Sequence[object] | None,
        generate: Generate,
        sampling: GenerationSettings,
        formatter: PromptFormatter,
        verdicts: Callable[[list[Candidate], list[object] | None], list[str | None]],
    ) -> None:
        """Retry the prompts of `round_` (a filtered `Round`, its `calls_for` set) that call for a refusal, an
        admission or a correction and kept no answer. `values`: the column value of each answer's prompt; `verdicts`: the gate and the
        filters on new candidates (None = kept). A found answer takes the place of the prompt's first sample; the
        samples a prompt cost are recorded on that sample (`retries`), found or not."""
        n, budget, batch = round_.samples_per_prompt, self.settings.retry_budget, self.settings.retry_batch
        kinds = round_.calls_for
        missing = [s for s in range(0, round_.fresh, n) if kinds[s] is not None
                   and all(round_.filter_reasons[k] is not None for k in range(s, s + n))]
        if sampling.temperature <= 0:  # greedy retries would repeat the same answer
            sampling = replace(sampling, temperature=0.7, top_p=0.95)
        drawn = dict.fromkeys(missing, 0)
        passes = 0
        while missing:
            # Few prompts left: each draws more at once, so a pass still fills a generation batch (a pass of 4
            # sequences takes about as long as one of 16 on the CPU engine).
            each = max(batch, -(-sampling.batch_size // len(missing)))
            draws = {s: min(each, budget - drawn[s]) for s in missing}
            owners = [s for s in missing for _ in range(draws[s])]
            if not owners:
                break
            shown = [self.exemplars(str(values[s]) if values is not None else "", round_.index, round_.prompt_indices[s],
                                    drawn[s] + j) for s in missing for j in range(draws[s])]
            texts = [self.retry_prompt(formatter, round_.prompts[s], ex, round_.exemplar_sets[s] if round_.exemplar_sets
                                       else ()) for s, ex in zip(owners, shown)]
            passes += 1
            results = self._sample(generate, texts, [kinds[s] for s in owners], [round_.prompts[s] for s in owners],
                                   formatter, replace(sampling, seed=sampling.seed * 1000 + 17 * passes),
                                   f"Round {round_.index}: retry {len(missing)} prompt(s) for an aligned answer")
            answers = [formatter.extract_response(r.text) for r in results]
            candidates = [Candidate(prompt=round_.prompts[s], response=a, finished=r.finished, exemplars=ex,
                                    calls_for=kinds[s]) for s, a, r, ex in zip(owners, answers, results, shown)]
            marks = [values[s] for s in owners] if values is not None else None
            found: set[int] = set()
            for s, result, answer, ex, verdict in zip(owners, results, answers, shown, verdicts(candidates, marks)):
                if verdict is None and s not in found:
                    found.add(s)
                    round_.replace_answer(s, result, answer, [e.id for e in ex])
            for s in missing:
                drawn[s] += draws[s]
                round_.retries[s] = drawn[s]
            missing = [s for s in missing if s not in found]


    def _sample(self, generate: Generate, texts: list[str], kinds: list[str | None], prompts: list[str], formatter,
                sampling: GenerationSettings, desc: str) -> list[GenerationResult]:
        """One retry pass. With the screen on, every sample is drawn to `screen` tokens first; a sample that looks for
        a refusal or a correction is continued to the full length only if its opening already shows one (the rest
        fail the gate whatever follows), the others (admissions) whenever they have not ended."""
        if not 0 < self.screen < sampling.max_new_tokens or not any(k in (REFUSAL, CORRECTION) for k in kinds):
            return generate(texts, sampling, desc)
        heads = generate(texts, replace(sampling, max_new_tokens=self.screen), f"{desc} (first {self.screen} tokens)")
        go_on = [i for i, (kind, head) in enumerate(zip(kinds, heads)) if not head.finished and (
            kind not in (REFUSAL, CORRECTION) or _shows(kind, prompts[i], formatter.extract_response(head.text)))]
        results = list(heads)
        if go_on:
            rest = replace(sampling, max_new_tokens=sampling.max_new_tokens - self.screen, seed=sampling.seed + 1)
            for i, tail in zip(go_on, generate([texts[i] + heads[i].text for i in go_on], rest, f"{desc} (continued)")):
                results[i] = _joined(heads[i], tail)
        return results


def _shows(kind: str | None, prompt: str, answer: str) -> bool:
    """The opening of a retry answer already shows the refusal or correction its prompt calls for."""
    if kind == REFUSAL:
        return refusal_evidence(answer) is not None
    return correction_evidence(prompt, answer) is not None


def _joined(head: GenerationResult, tail: GenerationResult) -> GenerationResult:
    """A screened sample's opening and its continuation, as one sample."""
    return GenerationResult(text=head.text + tail.text, num_tokens=head.num_tokens + tail.num_tokens,
                            finished=tail.finished, token_ids=head.token_ids + tail.token_ids)


def figures(calls_for: Sequence[str | None], kept: Sequence[bool], retries: Sequence[int], n: int) -> dict[str, Any]:
    """A round's aligned-data figures from its fresh answers (`n` per prompt): the prompts of the mix, those that call
    for a refusal or an admission and how many of them kept an aligned answer, the same for premise corrections, and
    the retry samples drawn."""
    starts = range(0, len(calls_for), n)
    needed = [s for s in starts if calls_for[s] in (REFUSAL, ADMISSION)]
    corrections = [s for s in starts if calls_for[s] == CORRECTION]
    return {
        "aligned_prompts": sum(calls_for[s] is not None for s in starts),
        "aligned_needed": len(needed),
        "aligned_kept": sum(any(kept[s: s + n]) for s in needed),
        "aligned_retry_samples": sum(retries),
        "corrections_needed": len(corrections),
        "corrections_kept": sum(any(kept[s: s + n]) for s in corrections),
    }
