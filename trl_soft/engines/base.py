"""What every generation engine offers, and what the vLLM engines share.

An engine continues prompts: `generate(prompts, settings, desc) -> [GenerationResult]`, in input order. Before a
round generates, the trainer tells it which weights to use (`load(weights, model)`): the starting model, or the
round just saved (full weights, or a LoRA adapter over the base). The transformers engine generates from the training
model itself and ignores this; the vLLM engines load the saved folder (no NCCL, no weight broadcast: the same path
works on a CPU, one GPU, and a separate inference machine that sees the output folder).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from ..generation import GenerationResult, GenerationSettings


@dataclass(frozen=True)
class EngineWeights:
    """The weights to generate with: the base model, or a saved round (`kind` 'full' or 'adapter')."""

    base: str
    kind: str = "base"
    folder: str | None = None
    tag: str = "base"

    @classmethod
    def saved(cls, folder: str | Path, base: str, tag: str) -> EngineWeights:
        folder = Path(folder)
        kind = "adapter" if (folder / "adapter_config.json").is_file() else "full"
        return cls(base=base, kind=kind, folder=str(folder.resolve()), tag=tag)

    @property
    def path(self) -> str:
        """The folder holding the weights (the base model's for 'base')."""
        return self.folder if self.folder is not None else self.base


def adapter_rank(folder: str | Path) -> int:
    """The largest LoRA rank of a saved adapter (its `r`, or the largest of its `rank_pattern`)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


class GenerationEngine(Protocol):
    name: str

    def load(self, weights: EngineWeights, model: Any = None) -> float:
        """Generate with these weights from now on; returns the seconds the hand-over took."""

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        """Continue every prompt, in input order."""

    def close(self) -> None:
        """Release the engine (stop its processes). Safe to call twice."""


@dataclass(frozen=True)
class StopRule:
    """Where a vLLM answer ends: special tokens as token ids (vLLM matches them before detokenising), the rest as
    text. The transformers engine ends on the same set (EOS ids plus stop strings)."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]) -> StopRule:
        ids: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        strings: list[str] = []
        special = set(tokenizer.all_special_tokens)
        for text in stop_strings:
            token_ids = tokenizer.convert_tokens_to_ids([text]) if text in special else []
            if token_ids and token_ids[0] is not None and token_ids[0] != tokenizer.unk_token_id:
                ids.append(int(token_ids[0]))
            else:
                strings.append(text)
        return cls(tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(strings)))


def prompt_seed(base_seed: int, index: int) -> int:
    """The sampling seed of prompt `index` of a request: each prompt its own stream, whatever the batching.

    `base_seed` is the request's seed (for a round, the run seed plus the round; the behaviour evaluation and the
    diagnostics derive their own); `index` is the prompt's position in the whole request, also when several
    processes each answer a slice of it (`ranks.py` passes each slice's offset), so a prompt gets the same seed,
    and the same answer, whatever the number of processes."""
    return (base_seed * 100_003 + index) % 2**31


def sampling_fields(settings: GenerationSettings, stop: StopRule, seed: int) -> dict[str, Any]:
    """vLLM sampling parameters for one prompt, as `SamplingParams` keywords and as OpenAI-API request fields.

    Everything is spelled out (no top-k, min-p or penalties) so that neither a model's `generation_config.json` nor a
    server's defaults change what is sampled; 0 temperature is greedy."""
    sampling = settings.temperature > 0
    return {
        "n": 1,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p if sampling else 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": seed,
        "stop": list(stop.strings),
        "stop_token_ids": list(stop.token_ids),
        "skip_special_tokens": False,
        "include_stop_str_in_output": False,
    }


def result_from_vllm(text: str, token_ids: Sequence[int], finish_reason: str | None, stop: StopRule) -> GenerationResult:
    """A `GenerationResult` from one vLLM completion. A stop token ends the answer and is not counted, as in the
    transformers engine; a stop string's own tokens are (vLLM has cut it from the text already)."""
    ids = list(token_ids)
    finished = finish_reason == "stop"
    if finished and ids and ids[-1] in stop.token_ids:
        ids = ids[:-1]
    return GenerationResult(text=text, num_tokens=len(ids), finished=finished, token_ids=tuple(ids))


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids exactly as the transformers engine feeds them (no special tokens added: templates have them)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
