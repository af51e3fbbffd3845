"""trl-soft: Step-On-Feet Tuning (SOFT / SOFT+), multi-round self-alignment by bootstrapping, as a TRL plugin."""

from .progress import quiet_at_import

quiet_at_import()  # before the imports below: bitsandbytes warns when it is imported (`trl_soft.progress`)

# ruff: noqa: E402
from .callbacks import EarlyCollapseCallback, RoundControl, SOFTCallback
from .config import SOFTConfig, SOFTSettings
from .curriculum import SCORERS, ScoringContext
from .models import load_model_and_tokenizer
from .prompting import Exemplar, Principles, load_exemplars, load_principles
from .rounds import Round
from .sampler import CurriculumSampler
from .trainer import (
    SOFTInterrupted,
    SOFTLockError,
    SOFTPremiseError,
    SOFTResumeError,
    SOFTRoundError,
    SOFTSaveError,
    SOFTTrainer,
)

__version__ = "0.1.0"

__all__ = [
    "SCORERS",
    "CurriculumSampler",
    "EarlyCollapseCallback",
    "Exemplar",
    "Principles",
    "Round",
    "RoundControl",
    "SOFTCallback",
    "SOFTConfig",
    "SOFTInterrupted",
    "SOFTLockError",
    "SOFTPremiseError",
    "SOFTResumeError",
    "SOFTRoundError",
    "SOFTSaveError",
    "SOFTSettings",
    "SOFTTrainer",
    "ScoringContext",
    "load_exemplars",
    "load_model_and_tokenizer",
    "load_principles",
]
