"""The transformers engine: `generate` on the training model itself, in every process (`generation.py`).

It needs no weight hand-over (it is the training model), runs wherever training runs, 4-bit QLoRA included, and is
the reference the vLLM engines are checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from ..generation import GenerationResult, GenerationSettings, generate_completions
from .base import EngineWeights


class HFEngine:
    name = "transformers"
    start_seconds = 0.0

    def __init__(self, model: Callable[[], object], tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator | None):
        self._model = model  # a getter: the trainer may wrap or reload its model between rounds
        self.tokenizer = tokenizer
        self.accelerator = accelerator

    def load(self, weights: EngineWeights, model=None) -> float:
        return 0.0  # generates from the training model, whatever it holds

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        return generate_completions(self._model(), self.tokenizer, prompts, settings, self.accelerator, desc=desc)

    def close(self) -> None:
        pass
