"""Everything scored after a round (and on the starting model): validation NLL, behaviour, collapse diagnostics and
benchmarks, with their timings, as one flat metrics dict plus the per-item scores a paired comparison needs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..behaviour.run import BehaviourRun
from ..behaviour.stats import ITEM_SCORES
from ..data import ValidationPair
from ..generation import GenerationResult, GenerationSettings
from ..prompting import PromptFormatter
from .benchmarks import BenchmarkSuite
from .diagnostics import DiagnosticsSettings, collapse_diagnostics
from .validation import VALIDATION_METRIC, ValidationSettings, validation_nll_items

Generate = Callable[[list[str], GenerationSettings, str], list[GenerationResult]]


class RoundEvaluator:
    def __init__(
        self,
        validation: ValidationSettings,
        diagnostics: DiagnosticsSettings,
        sampling: GenerationSettings,
        validation_set: Sequence[ValidationPair],
        benchmarks: BenchmarkSuite,
        behaviour: BehaviourRun,
        formatter: PromptFormatter,
    ):
        """`sampling`: the regeneration settings (the diagnostics sample the same way, with their own length)."""
        self.validation, self.diagnostics = validation, diagnostics
        self.validation_set, self.benchmarks, self.behaviour = list(validation_set), benchmarks, behaviour
        self.formatter = formatter
        self.diagnostic_sampling = replace(
            sampling, max_new_tokens=diagnostics.max_new_tokens, stop_strings=formatter.stop_strings
        )

    @property
    def scores_start(self) -> bool:
        """Whether the starting model is scored before round 1 (`evaluate_start` and something to score)."""
        return self.validation.evaluate_start and bool(self.validation_set or self.benchmarks or self.behaviour.enabled)

    def evaluate(self, round_index: int, model, accelerator, generate: Generate, round_dir: Path) -> dict[str, Any]:
        """The metrics of the current weights; behaviour answers go to `round_dir`."""
        metrics: dict[str, Any] = {ITEM_SCORES: {}}
        started = time.perf_counter()
        if self.validation_set:
            # In the precision the model trains in (`bf16`: autocast), like every forward of its training; on the
            # demo's CPU, 1.9x as fast as float32, the NLL 0.0006 nats apart (64 pairs of the exemplar pool).
            with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
                metrics[VALIDATION_METRIC], metrics[ITEM_SCORES][VALIDATION_METRIC] = validation_nll_items(
                    model, self.formatter, self.validation_set, self.validation.batch_size
                )
        metrics["seconds_validate"] = round(time.perf_counter() - started, 3)
        if self.behaviour.enabled:
            behaviour = self.behaviour.evaluate(round_index, generate, round_dir)
            metrics[ITEM_SCORES].update(behaviour.pop(ITEM_SCORES))
            metrics.update(behaviour)
        if self.validation_set and self.diagnostics.num_prompts > 0:
            started = time.perf_counter()
            prompts = [pair.prompt for pair in self.validation_set[: self.diagnostics.num_prompts]]
            metrics.update(
                collapse_diagnostics(
                    model,
                    self.formatter,
                    prompts,
                    self.diagnostic_sampling,
                    accelerator,
                    batch_size=self.validation.batch_size,
                    generate=generate,
                )
            )
            metrics["seconds_diagnostics"] = round(time.perf_counter() - started, 3)
        if self.benchmarks:
            started = time.perf_counter()
            metrics.update(self.benchmarks.evaluate(model, self.formatter.tokenizer))
            metrics["seconds_benchmarks"] = round(time.perf_counter() - started, 3)
        return metrics
