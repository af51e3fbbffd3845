"""Judges: who decides whether an answer refused, admitted it cannot know, or answered a harmful request, and which of
two answers is better.

- `base.py`: `CRITERIA` (the yes/no questions), `Verdict`, the `PointwiseJudge` / `PairwiseJudge` protocols;
- `rules.py`: `RuleJudge`, phrase lists, no model (the default `behaviour_judge`);
- `prompts.py`: the judge prompts model judges are asked, and how their one-token answers are read;
- `hf.py`: `HFJudge`, a local transformers model judging by next-token probabilities;
- `openai.py`: `OpenAIJudge`, the same prompts sent to an OpenAI-compatible endpoint (a vLLM server, a hosted API);
- `cache.py`: `CachedJudge`, an on-disk verdict cache so that a resumed run does not judge again;
- `settings.py`: `JudgeSettings`, the `behaviour_judge` / `pairwise_judge` / `judge_*` fields of `SOFTConfig`.
"""

from __future__ import annotations

from ..errors import JudgeError
from .base import CRITERIA, PairwiseJudge, PointwiseJudge, Verdict
from .cache import CachedJudge
from .hf import HFJudge
from .openai import OpenAIJudge
from .rules import RuleJudge
from .settings import PAIRWISE_JUDGES, POINTWISE_JUDGES, JudgeSettings

__all__ = [
    "CRITERIA",
    "PAIRWISE_JUDGES",
    "POINTWISE_JUDGES",
    "CachedJudge",
    "HFJudge",
    "JudgeError",
    "JudgeSettings",
    "OpenAIJudge",
    "PairwiseJudge",
    "PointwiseJudge",
    "RuleJudge",
    "Verdict",
]

