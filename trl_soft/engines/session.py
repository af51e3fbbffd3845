"""One run's use of its generation engine: started on first use, told which weights to generate with, timed, stopped.

The trainer owns one `EngineSession`. It generates with the weights it was last pointed at (`use_start`,
`use_round`), handing them to the engine only when they changed, and keeps the seconds those hand-overs took (the
`seconds_engine_sync` round metric). `close` stops whatever the engine started (a vLLM server included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..distributed import is_main_process
from ..generation import GenerationResult, GenerationSettings
from ..state import round_paths
from . import MainProcessEngine, make_vllm_engine
from .base import EngineWeights, GenerationEngine
from .choice import EngineChoice, EngineUnavailable, choose_engine, read_model_facts
from .hf import HFEngine
from .settings import EngineSettings


class EngineSession:
    def __init__(
        self,
        choice: EngineChoice,
        settings: EngineSettings,
        output_dir: Path,
        seed: int,
        model: Callable,
        tokenizer,
        accelerator,
    ):
        """`model()` returns the training model (wrapped); the HF engine generates with it, vLLM engines get it
        unwrapped for in-memory weight hand-overs."""
        self.choice, self.settings, self.output_dir, self.seed = choice, settings, Path(output_dir), seed
        self.model, self.tokenizer, self.accelerator = model, tokenizer, accelerator
        self.engine: GenerationEngine | None = None
        self.weights = EngineWeights(base=choice.base or "")
        self.sync_seconds = 0.0  # running total of weight hand-overs to the engine

    @staticmethod
    def choose(settings: EngineSettings, model, peft_config, kbit: bool, use_cpu: bool) -> EngineChoice:
        """Which engine generates, decided and announced before any weights load (`ValueError` when the settings
        insist on one that cannot run here)."""
        on_cuda = torch.cuda.is_available() and not use_cpu
        try:
            choice = choose_engine(settings, read_model_facts(model, peft_config, kbit, on_cuda))
        except EngineUnavailable as err:
            raise ValueError(str(err)) from None
        if is_main_process():
            print(f"SOFT: generation engine: {choice.describe()}", flush=True)
        return choice

    def use_start(self) -> None:
        """Generate with the starting model."""
        self.weights = EngineWeights(base=self.choice.base or "")

    def use_round(self, round_index: int) -> None:
        """Generate with the model saved after `round_index` (round 0: the starting model)."""
        if round_index == 0:
            return self.use_start()
        model_dir = round_paths(self.output_dir, round_index).model
        self.weights = EngineWeights.saved(model_dir, self.choice.base or "", f"round_{round_index}")

    def generate(self, texts: list[str], settings: GenerationSettings, desc: str) -> list[GenerationResult]:
        """Continue every text on the current weights; the same ordered results on every process."""
        engine = self._started()
        self.sync_seconds += engine.load(self.weights, self.accelerator.unwrap_model(self.model()))
        return engine.generate(texts, settings, desc)

    def _started(self) -> GenerationEngine:
        if self.engine is None:
            if self.choice.backend == "hf":
                self.engine = HFEngine(self.model, self.tokenizer, self.accelerator)
            else:
                self.engine = MainProcessEngine(
                    lambda: make_vllm_engine(self.choice, self.settings, self.tokenizer, self.output_dir, self.seed)
                )
                if is_main_process():
                    print(f"SOFT: {self.engine.name} started in {self.engine.start_seconds:.1f} s", flush=True)
        return self.engine

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
