"""The behaviour side of one SOFT run: data and judge checks before any model work, the evaluation of the starting
model and of every round (answers saved for reading), the premise check, and the principle gate's verdicts.

The trainer calls it; it does not know the trainer. With several processes, judging runs on the main process and the
verdicts are broadcast (the answers come from the engine, which already gives every process the same ones).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..distributed import is_main_process, run_on_main
from ..errors import SOFTPremiseError
from ..judges.settings import JudgeSettings
from ..prompting import Exemplar, PromptFormatter
from ..state import JUDGE_CACHE, atomic_write_json, atomic_write_jsonl
from .compare import compare
from .data import SPLIT_SEED, BehaviourSets
from .evaluate import BehaviourEvaluator, Generate, format_premise, premise_check
from .gate import PrincipleGate
from .settings import METRICS, BehaviourSettings

logger = logging.getLogger(__name__)

SAMPLES = "behaviour.jsonl"  # in each round folder: every behaviour answer with its verdict
# The held-out items: the starting model's answers (round_0) and the final model's (the run folder), with verdicts;
# the starting model's item scores in its metrics under CONFIRMATION_SCORES.
CONFIRMATION_SAMPLES = "confirmation.jsonl"
CONFIRMATION_SCORES = "confirmation_item_scores"
REFERENCE = "behaviour_reference.json"  # in round_0: the starting model's answers that win rates compare with


class BehaviourRun:
    def __init__(
        self,
        settings: BehaviourSettings,
        judges: JudgeSettings,
        output_dir: Path,
        gate: bool = False,
        gate_column: str | None = None,
        gate_values: Sequence[str] = ("harmful",),
        prompt_columns: Sequence[str] = (),
        honesty_values: Sequence[str] = (),
    ):
        """Load and check everything the evaluation and the gate need; nothing is generated or judged yet. The items
        split (seeded) into the selection part, evaluated every round, and the confirmation part (`confirmation`),
        evaluated on the starting and the final model only."""
        self.settings, self.judge_settings, self.output_dir = settings, judges, Path(output_dir)
        loaded = BehaviourSets.load(settings) if settings.enabled else BehaviourSets({})
        self.all_items = loaded.texts()
        self.sets, self.confirmation = loaded.split(settings.confirmation_share)
        self.gate_on, self.gate_column, self.gate_values = gate, gate_column, tuple(gate_values)
        self.honesty_values = tuple(honesty_values)  # empty: the honesty gate is off
        if gate:
            PrincipleGate(None, gate_column, gate_values).check_dataset(prompt_columns)  # type: ignore[arg-type]
        if self.sets or (gate and gate_column is None) or self.honesty_values:
            judges.check_reachable()
        self._judge = None
        self._pairwise = None
        self._evaluator: BehaviourEvaluator | None = None
        self._confirmer: BehaviourEvaluator | None = None

    @classmethod
    def for_run(cls, settings, output_dir: Path, prompt_columns: Sequence[str]) -> BehaviourRun:
        """The behaviour run of a SOFT run (`settings`: its `SOFTSettings`), with the principle gate as its filter
        settings ask."""
        filters = settings.filters
        return cls(
            settings.behaviour, settings.judges, output_dir, gate=filters.gate_on, gate_column=filters.gate_column,
            gate_values=filters.gate_values, prompt_columns=prompt_columns,
            honesty_values=filters.honesty_values if filters.honesty_on else (),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.sets)

    # ---- judges (built on first use, main process only) ---------------------------------------------------------
    def _judges(self):
        if self._judge is None:
            self._judge, self._pairwise = self.judge_settings.build(self.output_dir / JUDGE_CACHE)
        return self._judge, self._pairwise

    def _pointwise(self):
        return self._judges()[0]

    def _pair(self):
        return self._judges()[1]

    def attach(
        self,
        formatter: PromptFormatter,
        exemplars_for: Callable[[int, str], Sequence[Exemplar]],
        engraving_shot: Exemplar | None,
        batch_size: int,
        seed: int,
    ) -> None:
        """Once the tokenizer is known: how behaviour prompts are written and generated."""
        if not self.enabled:
            return
        self._evaluator = BehaviourEvaluator(
            self.settings, self.sets, formatter, _MainProcessJudge(self._pointwise),
            _MainProcessPairwise(self._pair) if self.judge_settings.pairwise != "none" else None,
            exemplars_for, engraving_shot, batch_size, seed,
        )
        if self.confirmation:
            self._confirmer = BehaviourEvaluator(
                replace(self.settings, fewshot=(), fewshot_every=0), self.confirmation, formatter,
                _MainProcessJudge(self._pointwise), None, None, engraving_shot, batch_size, seed,
            )

    # ---- the principle gate -----------------------------------------------------------------------------------------
    def gate_violations(
        self, prompts: Sequence[str], answers: Sequence[str], column_values: Sequence[object] | None
    ) -> list[bool]:
        """Which answers break the principles (comply with a harmful request)."""
        return run_on_main(lambda: self._gate().violations(prompts, answers, column_values))

    def inventions(self, prompts: Sequence[str], answers: Sequence[str], column_values: Sequence[object]) -> list[bool]:
        """Which answers invent facts where the request calls for an admission (the honesty side of the gate)."""
        return run_on_main(lambda: self._gate().inventions(prompts, answers, column_values))

    def judge_candidates(self, candidates: list, column_values: Sequence[object] | None, honesty: bool) -> list:
        """`candidates` (`filters.Candidate`s) marked by the principle gate (when on) and, with `honesty`, its
        honesty side; returned for the filters to judge."""
        prompts, answers = [c.prompt for c in candidates], [c.response for c in candidates]
        if self.gate_on:
            for candidate, violates in zip(candidates, self.gate_violations(prompts, answers, column_values)):
                candidate.violates_principles = violates
        if honesty:
            for candidate, invents in zip(candidates, self.inventions(prompts, answers, column_values)):
                candidate.invents_facts = invents
        return candidates

    def _gate(self) -> PrincipleGate:
        return PrincipleGate(self._pointwise(), self.gate_column, self.gate_values, self.honesty_values)

    # ---- evaluation -------------------------------------------------------------------------------------------------
    def evaluate(self, round_index: int, generate: Generate, round_dir: Path) -> dict[str, Any]:
        """Evaluate the current weights (zero-shot; with the principled prompt too on the rounds `behaviour_fewshot`
        names); write the answers (and, at round 0, the reference answers) to `round_dir`."""
        if self._evaluator is None:
            return {}
        reference = self._load_reference() if round_index > 0 else None
        styles = self.settings.styles(round_index)
        result = self._evaluator.evaluate(generate, reference, label=f"round {round_index}", styles=styles)
        metrics = result.round_metrics()
        metrics["seconds_behaviour"] = round(result.seconds, 3)
        if "fewshot" in styles:
            metrics["premise"] = premise_check(result.item_scores, self.settings.base_metrics())
        if round_index == 0 and self._confirmer is not None:  # the held-out items: the starting model's answers
            metrics[CONFIRMATION_SCORES] = self._confirm_answers(generate, "starting model", round_dir)
        if is_main_process():
            round_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(round_dir / SAMPLES, result.samples)
            if round_index == 0 and "helpful" in self.sets.items:
                atomic_write_json(round_dir / REFERENCE, result.answers.get("zero_shot", {}))
        return metrics

    # ---- the held-out verdict ---------------------------------------------------------------------------------------
    def _confirm_answers(self, generate: Generate, label: str, folder: Path) -> dict[str, list[float]]:
        result = self._confirmer.evaluate(generate, None, label=f"{label}, held out", styles=("zero_shot",))
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(folder / CONFIRMATION_SAMPLES, result.samples)
        return {m: s for m, s in result.item_scores.items() if m in METRICS}

    def confirm(self, final_round: int, generate: Generate, base_metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        """The final model against the starting model on the held-out items, which no decision of the run has seen:
        items gained and lost, exact one-sided p, mean change with its interval, smallest detectable change. None when
        nothing was held out or the start was not evaluated."""
        start = (base_metrics or {}).get(CONFIRMATION_SCORES)
        if self._confirmer is None or not start:
            return None
        if final_round == 0:
            final = start  # the final model is the starting model
        else:
            final = self._confirm_answers(generate, f"final model (round {final_round})", self.output_dir)
        comparison = compare(start, final)
        pooled = comparison.pooled
        return {
            "final_round": final_round, "share": self.settings.confirmation_share, "seed": SPLIT_SEED,
            "items": {name: len(items) for name, items in self.confirmation.items.items()},
            **pooled.as_dict(),
            "metrics": {m: c.as_dict() for m, c in comparison.metrics.items()},
        }

    def unmeasured_note(self) -> str:
        """What alignment this run does not measure, in a sentence ("" when it measures every default set)."""
        if not self.enabled:
            return "(`behaviour_eval` is 'none'.)"  # the summary's own first line says the rest
        if self.sets.unavailable:
            missing = "; ".join(f"'{name}' ({why})" for name, why in self.sets.unavailable.items())
            return f"part of alignment was NOT measured: the default behaviour set {missing} could not be loaded."
        return ""

    def check_premise(self, premise: dict[str, Any] | None) -> None:
        """Say before round 1 whether the principle-driven prompt beats zero-shot; stop if it must and does not."""
        if premise is None:
            return
        if is_main_process():
            logger.info(f"premise check (starting model, greedy):\n{format_premise(premise)}")
        if self.settings.require_premise and premise["verdict"] != "holds":
            raise SOFTPremiseError(
                f"`require_premise=True` and the premise check {premise['verdict']} (see above; the answers are in "
                f"{self.output_dir / 'round_0' / SAMPLES}). Nothing was trained. Improve the principles or exemplars, "
                "use a larger model, or set `require_premise=False` to train anyway."
            )

    def _load_reference(self) -> dict[str, str] | None:
        if "helpful" not in self.sets.items:
            return None
        path = self.output_dir / "round_0" / REFERENCE
        if not path.is_file():
            raise FileNotFoundError(
                f"The helpful win rate compares with the starting model's answers in {path}, which is missing. Keep "
                "`evaluate_start=True` (it writes them before round 1), or drop 'helpful' from `behaviour_eval`."
            )
        return json.loads(path.read_text(encoding="utf-8"))


class _MainProcessJudge:
    """A pointwise judge that judges on the main process and gives every process the verdicts."""

    def __init__(self, build):
        self._build = build

    @property
    def name(self) -> str:
        return run_on_main(lambda: self._build().name)

    def criteria(self):
        return run_on_main(lambda: self._build().criteria())

    def judge(self, criterion, prompts, answers):
        return run_on_main(lambda: self._build().judge(criterion, prompts, answers))


class _MainProcessPairwise:
    def __init__(self, build):
        self._build = build

    def compare(self, prompts, first, second):
        return run_on_main(lambda: self._build().compare(prompts, first, second))
