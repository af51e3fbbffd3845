"""trl-soft: Step-On-Feet Tuning (SOFT / SOFT+), multi-round self-alignment by bootstrapping, as a TRL plugin."""

from .progress import quiet_imports

# Importing the package changes nothing outside it (no environment variable, logger level or handler, warning filter
# or progress-bar switch; tests/test_progress.py): the CLI and the scripts quiet what they run, not the import.
with quiet_imports():  # bitsandbytes logs a harmless kernel-hub warning when peft imports it (`trl_soft.progress`)
    from .callbacks import EarlyCollapseCallback, RoundControl, SOFTCallback
    from .config import SOFTConfig, SOFTSettings
    from .curriculum import SCORERS, ScoringContext
    from .errors import (
        SOFTInterrupted,
        SOFTLockError,
        SOFTPremiseError,
        SOFTResumeError,
        SOFTRoundError,
        SOFTSaveError,
    )
    from .models import load_model_and_tokenizer
    from .prompting import Exemplar, Principles, load_exemplars, load_principles
    from .rounds import Round
    from .sampler import CurriculumSampler
    from .trainer import SOFTTrainer

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
