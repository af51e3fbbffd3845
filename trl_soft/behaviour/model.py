"""The behaviour evaluation of any model, outside a run: `trl-soft eval --behaviour`, `trl-soft check` (the premise
check) and the library call `evaluate_model_behaviour`.

The model (a hub id, a folder, `embedded`, or a LoRA adapter folder) answers through the same engines as the rounds:
vLLM where it can run it (an adapter is merged into a temporary copy first), transformers otherwise.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from ..engines import EngineSettings, EngineWeights, HFEngine, choose_engine, make_vllm_engine
from ..engines.choice import read_model_facts
from ..judges.settings import JudgeSettings
from ..models import ensure_pad_token, load_inference_model, resolve_model_path
from ..prompting import Exemplar, ExemplarSampler, Principles, PromptFormatter, load_exemplars, load_principles
from .data import BehaviourSets
from .evaluate import BehaviourEvaluator, BehaviourResult, premise_check
from .settings import BehaviourSettings

logger = logging.getLogger(__name__)


@dataclass
class ModelBehaviour:
    """What `evaluate_model_behaviour` returns: the metrics, the premise check (with few-shot on), the answers."""

    metrics: dict[str, Any]
    premise: dict[str, Any] | None
    result: BehaviourResult
    engine: str = ""


def _merged_copy(adapter_dir: str, into: Path) -> str:
    """A full copy of base + adapter (vLLM loads it like any model)."""
    load_inference_model(adapter_dir, merge_adapter=True, dtype=torch.float32).save_pretrained(into)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(into)
    return str(into)


PARTS = ("all", "selection", "confirmation")


def evaluate_model_behaviour(
    model: str,
    settings: BehaviourSettings,
    judges: JudgeSettings,
    engine_settings: EngineSettings | None = None,
    principles: Principles | None = None,
    exemplars: Sequence[Exemplar] = (),
    num_exemplars: int = 5,
    seed: int = 42,
    batch_size: int = 16,
    reference_answers: dict[str, str] | None = None,
    work_dir: str | Path | None = None,
    exemplar_sampling: str = "random",
    part: str = "all",
) -> ModelBehaviour:
    """Answer the behaviour sets with `model` (zero-shot, and with the principle-driven prompt when
    `settings.behaviour_fewshot` has round 0), judge the answers and return rates with 95% intervals and, with few-shot on, the premise
    check. Data and judges are checked before the model loads. `part`: every item ('all'), or the run's selection or
    confirmation part (`behaviour_confirmation_share`): a setting is chosen on the selection part only."""
    sets = BehaviourSets.load(settings)
    if part not in PARTS:
        raise ValueError(f"`part` must be one of {PARTS}; got {part!r}.")
    if part != "all":
        sets = sets.split(settings.confirmation_share)[PARTS.index(part) - 1]
    if not sets:
        raise ValueError("`behaviour_eval` names no set: choose from harmful, benign, unknowable, helpful.")
    judges.check_reachable()
    engine_settings = engine_settings or EngineSettings()
    principles = principles or load_principles(None)
    exemplars = list(exemplars) or load_exemplars(None)
    path = resolve_model_path(model)
    scratch = tempfile.TemporaryDirectory(prefix="trl-soft-behaviour-") if work_dir is None else None
    work = Path(work_dir or scratch.name)  # type: ignore[union-attr]
    adapter = (Path(path) / "adapter_config.json").is_file()
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    on_cuda = torch.cuda.is_available()
    choice = choose_engine(engine_settings, read_model_facts(path, None, False, on_cuda))
    if adapter and choice.backend == "vllm":
        path = _merged_copy(path, work / "merged")
        choice = choose_engine(engine_settings, read_model_facts(path, None, False, on_cuda))
    logger.info(f"generation engine: {choice.describe()}")
    if choice.backend == "vllm":
        engine = make_vllm_engine(choice, engine_settings, tokenizer, work, seed)
        engine.load(EngineWeights(base=path))
    else:
        hf_model = load_inference_model(path, merge_adapter=True, dtype=torch.float32)  # an adapter is merged
        engine = HFEngine(lambda: hf_model, tokenizer, None)
    try:
        formatter = PromptFormatter(tokenizer, principles, "auto")
        sampler = ExemplarSampler(exemplars, num_exemplars, exemplar_sampling, seed)
        judge, pairwise = judges.build(work / "judge_cache.jsonl" if work_dir else None)
        evaluator = BehaviourEvaluator(settings, sets, formatter, judge, pairwise, lambda i, text: sampler.sample(0, i, text),
                                       None, batch_size, seed)
        styles = settings.styles(0)
        result = evaluator.evaluate(engine.generate, reference_answers, label=Path(model).name or model, styles=styles)
    finally:
        engine.close()
        if scratch is not None:
            scratch.cleanup()
    premise = premise_check(result.item_scores, settings.base_metrics()) if "fewshot" in styles else None
    return ModelBehaviour(result.metrics, premise, result, choice.describe())
