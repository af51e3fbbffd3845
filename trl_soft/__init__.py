"""trl-soft: Step-On-Feet Tuning (SOFT / SOFT+), multi-round self-alignment by bootstrapping, as a TRL plugin."""

from .callbacks import EarlyCollapseCallback, RoundControl, SOFTCallback
from .config import SOFTConfig
from .curriculum import SCORERS, ScoringContext
from .models import load_model_and_tokenizer
from .prompting import Exemplar, Principles, load_exemplars, load_principles
from .sampler import CurriculumSampler
from .trainer import SOFTRoundError, SOFTTrainer

__version__ = "0.1.0"

__all__ = [
    "SCORERS",
    "CurriculumSampler",
    "EarlyCollapseCallback",
    "Exemplar",
    "Principles",
    "RoundControl",
    "SOFTCallback",
    "SOFTConfig",
    "SOFTRoundError",
    "SOFTTrainer",
    "ScoringContext",
    "load_exemplars",
    "load_model_and_tokenizer",
    "load_principles",
]
