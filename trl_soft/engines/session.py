"""One run's use of its generation engine: started on first use, told which weights to generate with, timed, stopped.

The trainer owns one `EngineSession`. It generates with the weights it was last pointed at (`use_start`,
`use_round`), handing them to the engine only when they changed, and keeps the seconds those hand-overs took (the
`seconds_engine_sync` round metric). `close` stops whatever the engine started (a vLLM server included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..distributed import is_main_process, process_state
from ..errors import EngineUnavailable, PlanError
from ..generation import GenerationResult, GenerationSettings
from ..memory import CUDA_RESERVE, GIB, MemoryPlan, ModelShape, TrainingShape, device_memory, read_model_config
from ..progress import say
from ..state import ENGINE_WEIGHTS, round_paths
from . import MainProcessEngine, PerRankEngine, RankPlacement, make_vllm_engine
from .base import EngineWeights, GenerationEngine
from .choice import EngineChoice, choose_engine, fit_memory, generation_shape, read_model_facts
from .hf import HFEngine
from .settings import EngineSettings
from .vllm_server import check_servers
from .weights import prepare_merged_weights

logger = logging.getLogger(__name__)


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
        self.asleep = False  # sleep mode (`choice.sleep_mode`): the engine gave the GPU back while the model trains
        self.switch_seconds = 0.0  # running total of sleeping and waking

    @staticmethod
    def choose(settings: EngineSettings, model, peft_config, kbit: bool, use_cpu: bool) -> EngineChoice:
        """Which engine generates, decided and announced before any weights load (`ValueError` when the settings
        insist on one that cannot run here)."""
        on_cuda = torch.cuda.is_available() and not use_cpu
        try:
            choice = choose_engine(settings, read_model_facts(model, peft_config, kbit, on_cuda))
        except EngineUnavailable as err:
            raise ValueError(str(err)) from None
        if choice.backend == "vllm" and choice.mode == "server":
            check_servers(settings, on_cuda)  # devices that exist, servers that answer: before any weights load
        if is_main_process():
            logger.info(f"generation engine: {choice.describe()}")
        return choice

    @staticmethod
    def fit(choice: EngineChoice, settings, args, model, peft_config, kbit_config) -> EngineChoice:
        """On CUDA, the choice held against the memory plan (`choice.fit_memory`): the plan is printed, vLLM gets the
        GPU share it leaves, or `auto` falls back to transformers (`vllm`: `ValueError`), before any weights load.
        `settings` is the run's `SOFTSettings`, `args` its `SOFTConfig`. On a CPU nothing changes."""
        memory = device_memory() if torch.cuda.is_available() and not args.use_cpu else None
        if memory is None:
            return choice
        free, total = memory
        budget = min(total, free + CUDA_RESERVE)  # another tenant's memory is not this run's
        try:
            plan_for = run_planner(settings, args, model, peft_config, kbit_config, choice.max_model_len)
            choice, plan = fit_memory(choice, settings.engine, plan_for, budget)
            if plan is None and choice.backend == "hf":
                plan = plan_for(choice)
        except EngineUnavailable as err:
            raise ValueError(str(err)) from None
        except PlanError:  # a config without the sizes the plan reads: the run goes on as chosen
            plan = None
        if is_main_process():
            if plan is not None:
                say(f"memory plan per GPU ({free / GIB:.1f} of {total / GIB:.1f} GiB free):\n{plan.table(budget)}")
            if choice.backend == "hf":
                say(f"generation engine: {choice.describe()}")
        return choice

    def use_start(self) -> None:
        """Generate with the starting model."""
        self.weights = EngineWeights(base=self.choice.base or "")

    def use_round(self, round_index: int, folder: Path | None = None) -> None:
        """Generate with the model saved after `round_index` (round 0: the starting model), or with the final model
        made from it and saved in `folder` (`final_interpolation`)."""
        if folder is not None:
            self.weights = EngineWeights.saved(folder, self.choice.base or "", f"round_{round_index}_final")
        elif round_index == 0:
            self.use_start()
        else:
            model_dir = round_paths(self.output_dir, round_index).model
            self.weights = EngineWeights.saved(model_dir, self.choice.base or "", f"round_{round_index}")

    def generate(self, texts: list[str], settings: GenerationSettings, desc: str) -> list[GenerationResult]:
        """Continue every text on the current weights; the same ordered results on every process. Every caller goes
        through here (the rounds, the behaviour evaluation, the diagnostics), each with its own `settings.seed`; with
        an engine per process each answers a slice, its prompts seeded by their place in `texts` (`base.prompt_seed`)."""
        engine = self._started()
        self.wake()
        model = self.accelerator.unwrap_model(self.model())
        if self.choice.lora_mode == "merged":  # a collective under FSDP2/ZeRO-3: every process gathers, main writes
            self.sync_seconds += prepare_merged_weights(
                self.weights, model, self.output_dir / ENGINE_WEIGHTS, self.choice.dtype
            )
        self.sync_seconds += engine.load(self.weights, model)
        return engine.generate(texts, settings, desc)

    def _started(self) -> GenerationEngine:
        if self.engine is None:
            if self.choice.backend == "hf":
                self.engine = HFEngine(self.model, self.tokenizer, self.accelerator)
                return self.engine
            if self.choice.mode == "colocate" and self.settings.per_rank_engines(process_state().num_processes):
                placement = RankPlacement.here(self.settings.tensor_parallel_size, self.choice.on_cuda)
                self.engine = PerRankEngine(
                    lambda: make_vllm_engine(
                        self.choice, self.settings, self.tokenizer, self.output_dir, self.seed, placement
                    ),
                    placement, self.choice, self.output_dir / ENGINE_WEIGHTS,
                )
                what = self.engine.describe()
            else:
                self.engine = MainProcessEngine(
                    lambda: make_vllm_engine(self.choice, self.settings, self.tokenizer, self.output_dir, self.seed)
                )
                what = self.engine.name
            if is_main_process():
                logger.info(f"{what} started in {self.engine.start_seconds:.1f} s")
        return self.engine

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()

    # ---- sleep mode: the colocated engine on CUDA gives the GPU back while the model trains and scores ---------------
    def _layers(self) -> list:
        """The engine and, for a wrapper holding this process's engine (`MainProcessEngine`, `PerRankEngine`), the
        engine inside it (None on a process that hosts none)."""
        return [e for e in (self.engine, getattr(self.engine, "engine", None)) if e is not None]

    def sleep(self) -> None:
        """Before the model trains: the engine frees its GPU memory (level 1 with LoRA adapters, level 2 with full
        or merged weights). Nothing happens without sleep mode (CPU, server, `vllm_sleep_mode=False`) or before the
        engine has started; `generate` wakes it."""
        if not self.choice.sleep_mode or self.engine is None or self.asleep:
            return
        started = time.perf_counter()
        for layer in self._layers():  # the engines' own `sleep` is idempotent: a wrapper may forward it too
            if hasattr(layer, "sleep"):
                layer.sleep()
        self.asleep = True
        self.switch_seconds += time.perf_counter() - started

    def wake(self) -> None:
        """Before the engine generates. After a level-2 sleep its weights are gone: every layer's record of the
        weights it holds is cleared, so the next `load` reloads the current round's (or the base's) from disk."""
        if not self.asleep:
            return
        started = time.perf_counter()
        for layer in self._layers():
            if hasattr(layer, "wake"):
                layer.wake()
        if self.choice.sleep_level == 2:
            for layer in self._layers():
                if hasattr(layer, "current"):
                    layer.current = None
        self.asleep = False
        self.switch_seconds += time.perf_counter() - started


def run_planner(settings, args, model, peft_config, kbit_config, max_model_len: int | None = None
                ) -> Callable[[EngineChoice], MemoryPlan]:
    """The memory plan of this run for a given engine choice: the model's config (a model object's, or config.json
    of its folder or hub id), the training arguments, PEFT and quantization configs, the run's processes, the
    engine settings and `generation_batch_size`. Training sequences are at most `max_length`, and no longer than the
    engine's `max_model_len` (the longest prompt with its answer) when that is known."""
    config = model.config.to_dict() if hasattr(model, "config") else read_model_config(model)
    seq_len = min(args.max_length or 1024, max_model_len or args.max_length or 1024)
    training = TrainingShape.from_run(args, peft_config, kbit_config, process_state().num_processes, seq_len)
    shape = ModelShape.from_config(config)

    def plan_for(choice: EngineChoice) -> MemoryPlan:
        return MemoryPlan.build(shape, training, generation_shape(choice, settings.engine, settings.generation.batch_size))

    return plan_for
