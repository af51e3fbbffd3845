"""TruthfulQA MC1 and MC2, scored as lm-evaluation-harness's `truthfulqa_mc1` / `truthfulqa_mc2` tasks.

- Prompt: lm-evaluation-harness's own `doc_to_text` template for the task (its 6-shot QA primer followed by
  `Q: <question>\\nA:`), read from the installed `lm-eval` package so the prompt is the harness's, character for
  character. `truthfulqa_template` points at a copy instead (a YAML with a `doc_to_text` key, or a Jinja file),
  rendered in Jinja's immutable sandbox: a template can only format the question, never reach Python; and in a
  separate process under memory, time and size limits (`trl_soft.sandbox`), so `'x' * 10**9` cannot exhaust the run.
- Each choice is the continuation `" " + choice`, scored by summed log-likelihood.
- MC1: accuracy of the highest-scoring choice among `mc1_targets` (the correct one is listed first).
- MC2: probability mass of the true answers of `mc2_targets`, normalised over all its answers.

MC1 and MC2 share a question's context, so both are scored from one request per question (choices that appear in
both lists are scored once).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from datasets import load_dataset

from ..errors import TemplateRenderError
from ..files import json_lines, read_text
from ..sandbox import render_bounded
from .multiple_choice import ChoiceRequest

HUB_NAME = "truthfulqa/truthful_qa"
LOCAL_FILE = "truthfulqa/truthful_qa_mc.jsonl"
INSTALL_LM_EVAL = "pip install lm-eval"


@dataclass(frozen=True)
class TruthfulQAItem:
    question: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]


def _targets(row: dict, key: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    targets = row.get(key)
    if not isinstance(targets, dict) or not targets.get("choices"):
        raise ValueError(f"TruthfulQA {where}: {key!r} is missing or has no choices.")
    choices, labels = targets["choices"], targets.get("labels", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"TruthfulQA {where}: {key!r} 'choices' must be a list of strings; got {choices!r}.")
    if not isinstance(labels, list) or not all(label in (0, 1) and not isinstance(label, float) for label in labels):
        raise ValueError(f"TruthfulQA {where}: {key!r} 'labels' must be a list of 0 and 1; got {labels!r}.")
    choices, labels = tuple(choices), tuple(int(label) for label in labels)
    if len(choices) != len(labels):
        raise ValueError(f"TruthfulQA {where}: {key!r} has {len(choices)} choices but {len(labels)} labels.")
    if 1 not in labels:
        raise ValueError(f"TruthfulQA {where}: {key!r} has no correct answer (no label 1).")
    if any(not str(c).strip() for c in choices):
        raise ValueError(f"TruthfulQA {where}: {key!r} has an empty choice.")
    return choices, labels


def parse_item(row: dict, where: str) -> TruthfulQAItem:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"TruthfulQA {where}: 'question' is missing or empty.")
    mc1_choices, mc1_labels = _targets(row, "mc1_targets", where)
    if mc1_labels[0] != 1:
        raise ValueError(f"TruthfulQA {where}: the correct MC1 choice must be listed first (as on the hub).")
    mc2_choices, mc2_labels = _targets(row, "mc2_targets", where)
    return TruthfulQAItem(question, mc1_choices, mc1_labels, mc2_choices, mc2_labels)


def load_truthfulqa(source: str | None = None, limit: int | None = None) -> list[TruthfulQAItem]:
    """Items from a data folder (containing `truthfulqa/truthful_qa_mc.jsonl`), that file itself, or the hub."""
    source = source or HUB_NAME
    path = Path(source)
    if path.is_dir():
        path = path / LOCAL_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"TruthfulQA: {path} does not exist. Point `--data_dir` at a folder holding {LOCAL_FILE}, or use the "
                f"hub dataset {HUB_NAME!r}."
            )
    if path.is_file():
        shape = "{'question', 'mc1_targets': {'choices', 'labels'}, 'mc2_targets': {'choices', 'labels'}}"
        lines = list(json_lines(path, "TruthfulQA", shape))
        where, rows = [w for w, _ in lines], [row for _, row in lines]
        if not rows:
            raise ValueError(f"TruthfulQA: {path} holds no questions. It needs one JSON object per line, {shape}.")
    elif source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(
            f"TruthfulQA: no such file or folder {source!r}. Point `--data_dir` (`benchmark_data_dir`) at a folder "
            f"holding {LOCAL_FILE}, or use the hub dataset {HUB_NAME!r}."
        )
    else:
        rows, where = _load_hub(source)
    if limit is not None:
        rows, where = rows[:limit], where[:limit]
    return [parse_item(row, w) for row, w in zip(rows, where)]


def _load_hub(name: str) -> tuple[list[dict], list[str]]:
    try:
        dataset = load_dataset(name, "multiple_choice", split="validation")
    except Exception as err:  # no network, unknown name, ...
        raise RuntimeError(
            f"TruthfulQA: could not load the hub dataset {name!r} ({type(err).__name__}: {err}). Without a network, "
            f"pass a local copy with `--data_dir` (a folder holding {LOCAL_FILE})."
        ) from err
    return [dict(row) for row in dataset], [f"{name} row {i}" for i in range(len(dataset))]


@lru_cache(maxsize=4)
def prompt_template(path: str | None = None) -> str:
    """The source of lm-evaluation-harness's `doc_to_text` Jinja template for truthfulqa_mc1 (or of the one in
    `path`). It is compiled and rendered only by `render_prompts`: in Jinja's immutable sandbox with strict undefined
    names (a template may format `question`, and nothing else), in a child process under limits."""
    if path is None:
        spec = importlib.util.find_spec("lm_eval")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "TruthfulQA uses lm-evaluation-harness's own prompt (its QA primer), read from the `lm-eval` package, "
                f"which is not installed. Install it with `{INSTALL_LM_EVAL}`, or pass `truthfulqa_template`."
            )
        path = str(Path(list(spec.submodule_search_locations)[0]) / "tasks" / "truthfulqa" / "truthfulqa_mc1.yaml")
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"`truthfulqa_template`: no such file {path!r}. Give a Jinja file or a YAML file with a `doc_to_text` key, "
            "or leave it unset for lm-evaluation-harness's own prompt."
        )
    text = read_text(path, "`truthfulqa_template`")
    source = text
    if path.endswith((".yaml", ".yml")):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"`truthfulqa_template`: {path} is not valid YAML ({err}).") from err
        source = document.get("doc_to_text") if isinstance(document, dict) else None
        if not isinstance(source, str):
            raise ValueError(
                f"`truthfulqa_template`: {path} has no `doc_to_text` string (the Jinja template of the prompt, as in "
                "lm-evaluation-harness's task YAML files)."
            )
    return source


def render_prompts(template: str, questions: Sequence[str], path: str | None = None) -> list[str]:
    """The prompts of `questions` (one child process for all, `trl_soft.sandbox`); a template that reaches for
    anything but `question` (an unsafe attribute, a name it is not given), does not compile, or exceeds the limits is
    refused naming `truthfulqa_template`."""
    try:
        return render_bounded(template, [{"question": q} for q in questions])
    except TemplateRenderError as err:
        if err.kind == "syntax":
            raise ValueError(f"`truthfulqa_template`: {path} is not a valid Jinja template ({err}).") from None
        if err.kind == "security":
            raise ValueError(
                f"`truthfulqa_template`: {path} tries to reach unsafe Python internals ({err}); it is rendered in a "
                "sandbox. A TruthfulQA template may only format `question`."
            ) from None
        if err.kind in ("size", "memory", "time"):
            raise ValueError(
                f"`truthfulqa_template`: {path} cannot be rendered within the limits ({err}). A TruthfulQA prompt is "
                "a few thousand characters: the template must format `question`, not build large texts."
            ) from None
        raise ValueError(
            f"`truthfulqa_template`: {path} cannot be rendered ({err}). A TruthfulQA template is given `question` "
            "only."
        ) from None


def check_template(path: str | None = None) -> None:
    """Compile the template and render it once, so that a broken or unsafe one fails before any model work."""
    render_prompts(prompt_template(path), ["What is the capital of France?"], path)


def build_requests(items: Sequence[TruthfulQAItem], template_path: str | None = None):
    """One request per question over the union of its MC1 and MC2 choices, and where each list's scores sit."""
    contexts = render_prompts(prompt_template(template_path), [item.question for item in items], template_path)
    requests, layout = [], []
    for item, context in zip(items, contexts):
        union = list(dict.fromkeys(item.mc1_choices + item.mc2_choices))
        index = {choice: k for k, choice in enumerate(union)}
        requests.append(ChoiceRequest(context=context, continuations=tuple(" " + c for c in union)))
        layout.append(([index[c] for c in item.mc1_choices], [index[c] for c in item.mc2_choices]))
    return requests, layout


def mc1_correct(log_likelihoods: Sequence[float], labels: Sequence[int]) -> bool:
    """The highest-scoring choice is the correct one (first index wins ties, as numpy's argmax)."""
    best = max(range(len(log_likelihoods)), key=lambda k: (log_likelihoods[k], -k))
    return labels[best] == 1


def mc2_score(log_likelihoods: Sequence[float], labels: Sequence[int]) -> float:
    """Normalised probability mass of the true answers (computed stably in log space)."""
    top = max(log_likelihoods)
    weights = [math.exp(ll - top) for ll in log_likelihoods]
    return sum(w for w, label in zip(weights, labels) if label == 1) / sum(weights)


@dataclass(frozen=True)
class TruthfulQAScores:
    mc1: float
    mc2: float
    per_item_mc1: tuple[bool, ...]
    per_item_mc2: tuple[float, ...]


def aggregate(items: Sequence[TruthfulQAItem], scores: Sequence[Sequence[float]], layout) -> TruthfulQAScores:
    mc1, mc2 = [], []
    for item, item_scores, (mc1_index, mc2_index) in zip(items, scores, layout):
        mc1.append(mc1_correct([item_scores[k] for k in mc1_index], item.mc1_labels))
        mc2.append(mc2_score([item_scores[k] for k in mc2_index], item.mc2_labels))
    n = max(len(items), 1)
    return TruthfulQAScores(sum(mc1) / n, sum(mc2) / n, tuple(mc1), tuple(mc2))
