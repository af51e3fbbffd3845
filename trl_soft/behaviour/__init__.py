"""Behaviour evaluation: does the model refuse harmful requests, answer benign ones, admit what it cannot know, and
answer better than the starting model? Every rate with a 95% interval, zero-shot and with the principle-driven prompt.

- `settings.py`: `BehaviourSettings` and `METRICS`, the one list of behaviour metrics (set, judge question, direction);
- `data.py`: the evaluation sets (HarmBench + Do-Not-Answer, the shipped benign and unknowable sets, Vicuna bench);
- `stats.py`: Wilson intervals, paired and Newcombe differences;
- `evaluate.py`: answering and judging, the premise check (principled vs zero-shot);
- `gate.py`: the principle gate on self-generated answers;
- `run.py`: the behaviour side of a SOFT run; `model.py`: the evaluation of any model (`trl-soft eval --behaviour`,
  `trl-soft check`).
"""

from .model import ModelBehaviour, evaluate_model_behaviour
from .settings import ALIGNMENT_SCORE, METRICS, BehaviourSettings

__all__ = ["ALIGNMENT_SCORE", "METRICS", "BehaviourSettings", "ModelBehaviour", "evaluate_model_behaviour"]
