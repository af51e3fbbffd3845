"""Generation engines: who writes each round's answers (and the diagnostic samples).

- `settings.py`: `EngineSettings`, the names and checks of the `generation_backend` / `vllm_*` fields;
- `choice.py`: which engine this run uses and why (`auto`: vLLM when it can run the model here);
- `hf.py`: transformers `generate` on the training model (the fallback, and the reference for equivalence tests);
- `vllm_local.py`: a colocated `vllm.LLM`; `vllm_server.py`: an OpenAI-compatible vLLM server, started by trl-soft or
  reached at a URL; both load each round's saved weights from disk (`weights.py` merges LoRA for CPU engines);
- `base.py`: the interface, the weights descriptor, the sampling parameters both vLLM engines send;
- `ranks.py`: with several processes, a colocated engine on every process (or tensor-parallel group of processes),
  each answering its slice of the prompts (`PerRankEngine`, `vllm_colocate_ranks='all'`, the default).

Otherwise, with several processes, a vLLM engine lives in the main process only (`vllm_colocate_ranks='main'`, and
the server mode): it generates every prompt, and the answers are broadcast to the other processes
(`MainProcessEngine`). Either way every process gets the same answers, in order, and they do not depend on the number
of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..distributed import is_main_process, run_on_main
from ..errors import EngineError, EngineUnavailable
from ..generation import GenerationResult, GenerationSettings
from ..state import ENGINE_WEIGHTS, SERVER_LOG
from .base import EngineWeights, GenerationEngine
from .choice import EngineChoice, ModelFacts, choose_engine, vllm_installed
from .hf import HFEngine
from .ranks import PerRankEngine, RankPlacement
from .settings import SYNC_METRIC, EngineSettings
from .vllm_local import VLLMColocateEngine
from .vllm_server import VLLMServerEngine

__all__ = [
    "EngineChoice",
    "EngineError",
    "EngineSettings",
    "EngineUnavailable",
    "EngineWeights",
    "GenerationEngine",
    "HFEngine",
    "MainProcessEngine",
    "ModelFacts",
    "PerRankEngine",
    "RankPlacement",
    "SYNC_METRIC",
    "choose_engine",
    "make_vllm_engine",
    "vllm_installed",
]


def make_vllm_engine(
    choice: EngineChoice, settings: EngineSettings, tokenizer, output_dir: Path, seed: int,
    placement: RankPlacement | None = None,
) -> GenerationEngine:
    """Start the vLLM engine `choice` describes (this process only; `placement`: its place among per-rank engines)."""
    work_dir = Path(output_dir) / ENGINE_WEIGHTS
    if choice.mode == "server":
        return VLLMServerEngine(choice, settings, tokenizer, work_dir, seed, Path(output_dir) / SERVER_LOG)

    return VLLMColocateEngine(choice, settings, tokenizer, work_dir, seed, placement)


class MainProcessEngine:
    """An engine that exists on the main process only; every process calls it and gets the same answers."""

    def __init__(self, start):
        self.engine: GenerationEngine | None = None

        def launch():
            self.engine = start()
            return self.engine.name, self.engine.start_seconds

        self.name, self.start_seconds = run_on_main(launch)

    def load(self, weights: EngineWeights, model=None) -> float:
        return run_on_main(lambda: self.engine.load(weights, model))  # type: ignore[union-attr]

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        return run_on_main(lambda: self.engine.generate(prompts, settings, desc))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.engine is not None and is_main_process():
            self.engine.close()
        self.engine = None
