"""Prompts: principles and exemplars in, generation prompts and engraving examples out.

Self-alignment uses two different prompts for the same question:

* the **generation prompt** (principle-driven): the principles, k in-context exemplars, then the user's prompt. The
  model of the previous round answers it, and its answer becomes training data;
* the **engraving example** (what is trained on): the user's prompt alone (zero-shot, or after one exemplar turn) and
  the answer as the completion. Training without the principles "engraves" them into the weights.

Both are rendered with the tokenizer's chat template when it has one (instruct models), or as a plain-text dialogue
("### User:" / "### Assistant:") for base models.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerBase

from .files import json_document, json_lines
from .settings import ConcernSettings, setting

PROMPT_FORMATS = ("auto", "chat", "plain")
EXEMPLAR_SAMPLING = ("random", "fixed", "similar")
# `similar`: maximal marginal relevance, relevance to the prompt against likeness to the exemplars already chosen.
MMR_LAMBDA = 0.7
PLAIN_USER_TAG = "### User:"
PLAIN_ASSISTANT_TAG = "### Assistant:"
THOUGHTS_TAG = "Internal thoughts:"
ANSWER_TAG = "Answer:"
EXEMPLAR_REQUIRED_KEYS = ("id", "prompt", "response")


@dataclass(frozen=True)
class Principle:
    name: str
    text: str


@dataclass(frozen=True)
class Principles:
    """The written rules the generation prompt opens with."""

    preamble: str
    items: tuple[Principle, ...]

    def render(self) -> str:
        lines = [self.preamble.strip(), ""]
        lines += [f"{i}. {p.name}: {p.text.strip()}" for i, p in enumerate(self.items, start=1)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Exemplar:
    """One in-context demonstration: a user prompt and the answer the principles call for."""

    id: str
    prompt: str
    response: str
    internal_thoughts: str = ""
    category: str = ""


def asset_path(name: str) -> Path:
    """Path of a file shipped in `trl_soft/assets/`."""
    return Path(str(resources.files("trl_soft") / "assets" / name))


def load_principles(path: str | Path | None = None) -> Principles:
    """Read a principles JSON file (default: the shipped one) and check its shape."""
    path = Path(path) if path is not None else asset_path("principles.json")
    if not path.is_file():
        raise FileNotFoundError(f"`principles_path`: no such file {str(path)!r}. Point it at a principles JSON file.")
    shape = "one JSON object {'preamble': ..., 'principles': [{'name': ..., 'text': ...}, ...]}"
    data = json_document(path, "`principles_path`", shape)
    items = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(
            f"`principles_path`: {path} must be an object with a non-empty 'principles' list of {{'name', 'text'}}."
        )
    principles = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not str(item.get("text", "")).strip():
            raise ValueError(f"`principles_path`: principle #{i} in {path} needs a non-empty 'text'.")
        principles.append(Principle(name=str(item.get("name", f"Principle {i + 1}")), text=str(item["text"])))
    return Principles(preamble=str(data.get("preamble", "")), items=tuple(principles))


def parse_exemplar(obj: object, where: str) -> Exemplar:
    """Build an `Exemplar` from a JSON object, or say which field of which line is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"`exemplars_path`: malformed exemplar at {where}: expected a JSON object, got "
                         f"{type(obj).__name__}.")
    for key in EXEMPLAR_REQUIRED_KEYS:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"`exemplars_path`: malformed exemplar at {where}: field {key!r} is missing or empty. Each exemplar "
                f"needs non-empty string fields {list(EXEMPLAR_REQUIRED_KEYS)} (optional: 'internal_thoughts', "
                "'category')."
            )
    return Exemplar(
        id=obj["id"],
        prompt=obj["prompt"].strip(),
        response=obj["response"].strip(),
        internal_thoughts=str(obj.get("internal_thoughts") or "").strip(),
        category=str(obj.get("category") or ""),
    )


def load_exemplars(path: str | Path | None = None) -> list[Exemplar]:
    """Read a JSONL exemplar pool (default: the shipped one); malformed lines and duplicate ids are errors."""
    path = Path(path) if path is not None else asset_path("exemplars.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"`exemplars_path`: no such file {str(path)!r}. Point it at a JSONL exemplar pool.")
    shape = "{'id', 'prompt', 'response'[, 'internal_thoughts', 'category']}"
    exemplars = [parse_exemplar(obj, where) for where, obj in json_lines(path, "`exemplars_path`", shape)]
    if not exemplars:
        raise ValueError(f"`exemplars_path`: {path} holds no exemplars. It needs one JSON object per line, {shape}.")
    check_exemplar_ids_unique(exemplars, str(path))
    return exemplars


def check_exemplar_ids_unique(exemplars: Sequence[Exemplar], source: str) -> None:
    seen: set[str] = set()
    for exemplar in exemplars:
        if exemplar.id in seen:
            raise ValueError(
                f"`exemplars_path`: malformed exemplar pool {source}: id {exemplar.id!r} appears twice; ids must be "
                "unique."
            )
        seen.add(exemplar.id)


@dataclass(frozen=True)
class PromptSettings(ConcernSettings):
    """The principles and exemplars of the generation prompt, its layout, and the engraving examples' shots."""

    principles_path: str | None = setting(
        None,
        "JSON file of principles ({'preamble': str, 'principles': [{'name', 'text'}]}). Default: the 14 "
        "principles shipped in trl_soft/assets/principles.json.",
    )
    exemplars_path: str | None = setting(
        None,
        "JSONL exemplar pool, one {'id', 'prompt', 'response'[, 'internal_thoughts', 'category']} a line. "
        "Default: the 32 exemplars shipped in trl_soft/assets/exemplars.jsonl.",
    )
    num_exemplars: int = setting(
        5,
        "In-context exemplars per generation prompt (k). Default 5 as in Self-Align; use fewer for small "
        "context windows or CPU runs.",
    )
    exemplar_sampling: str = setting(
        "random",
        "'random' (default, SOFT: k exemplars drawn afresh for every prompt, the diversity the paper "
        "finds essential) or 'fixed' (the same k exemplars for every prompt: the single-round Self-Align "
        "baseline).",
    )
    use_internal_thoughts: bool = setting(
        False,
        "Show the exemplars' 'internal thoughts' (Self-Align's reasoning about which principles apply) "
        "before each answer, and strip the model's own thoughts from its answer. Off by default (chosen here): "
        "it doubles the exemplar tokens and small models imitate the format poorly.",
    )
    prompt_format: str = setting(
        "auto",
        "Generation/engraving prompt layout: 'chat' (the tokenizer's chat template), 'plain' (a plain-text "
        "'### User:' / '### Assistant:' dialogue, for base models) or 'auto' (chat when the tokenizer has a "
        "chat template).",
    )
    engraving_shots: int = setting(
        0,
        "Exemplars shown before the prompt in the training examples ('principle engraving'): 0 (default, "
        "the model learns to answer well directly) or 1 (one fixed exemplar turn, no principles).",
    )

    def check(self) -> None:
        self.check_choice("exemplar_sampling", EXEMPLAR_SAMPLING)
        self.check_choice("prompt_format", PROMPT_FORMATS)
        if self.num_exemplars < 0:
            raise self.field_error("num_exemplars", f"must be >= 0 (0 means zero-shot generation); got "
                                                    f"{self.num_exemplars}.")
        if self.engraving_shots not in (0, 1):
            raise self.field_error("engraving_shots", f"must be 0 or 1; got {self.engraving_shots}.")


class ExemplarSampler:
    """Chooses the k in-context exemplars of each generation prompt.

    `random` draws k distinct exemplars per (round, prompt) from a generator seeded by the run seed, the round and the
    prompt's index, so the choice is diverse across prompts, reproducible, and the same on every process whatever the
    sharding. `fixed` draws one set once and uses it everywhere (the Self-Align single-round baseline).
    """

    def __init__(self, pool: Sequence[Exemplar], k: int, mode: str = "random", seed: int = 42):
        if not pool:
            raise ValueError(
                "The exemplar pool (`exemplars_path`, or `exemplars=`) is empty. SOFT needs at least one exemplar, "
                "also with `num_exemplars=0`: the training examples take their format from the pool before round 1, "
                "and `engraving_shots=1` shows its first exemplar. Keep the shipped pool (leave `exemplars_path` "
                "unset) or give one JSON object per line."
            )
        if k > len(pool):
            raise ValueError(
                f"`num_exemplars` is {k} but the exemplar pool has only {len(pool)} exemplars. Lower `num_exemplars` "
                "or add exemplars to the pool (`exemplars_path`)."
            )
        if mode not in EXEMPLAR_SAMPLING:
            raise ValueError(f"`exemplar_sampling` must be one of {EXEMPLAR_SAMPLING}; got {mode!r}.")
        self.pool = list(pool)
        self.k = k
        self.mode = mode
        self.seed = seed
        self._fixed = random.Random(f"soft-fixed-{seed}").sample(self.pool, k)
        self._bags: list[dict[str, float]] | None = None  # `similar`: each exemplar's tf-idf words, built on first use
        self._idf: dict[str, float] = {}

    def sample(self, round_index: int, prompt_index: int, prompt: str | None = None,
               category: str | None = None) -> list[Exemplar]:
        """The exemplars of one prompt. `similar` needs the prompt's text (without it, it draws as `random` does) and
        uses its category (the prompt dataset's `principle_gate_column` value) where there is one."""
        if self.mode == "fixed":
            return list(self._fixed)
        rng = random.Random(f"soft-{self.seed}-{round_index}-{prompt_index}")
        if self.mode == "similar" and prompt is not None:
            return self._similar(prompt, category, rng)
        return rng.sample(self.pool, self.k)

    def _similar(self, prompt: str, category: str | None, rng: random.Random) -> list[Exemplar]:
        """k exemplars by maximal marginal relevance: each next one the most relevant to the prompt (tf-idf cosine of
        the words of the prompts, plus 1 for an exemplar of the prompt's own category) less its likeness to those
        chosen already (`MMR_LAMBDA`); ties broken at random, seeded per (round, prompt)."""
        if self._bags is None:
            counts = [_bag(f"{e.prompt} {e.category}") for e in self.pool]
            df: dict[str, int] = {}
            for bag in counts:
                for word in bag:
                    df[word] = df.get(word, 0) + 1
            self._idf = {w: math.log((1 + len(counts)) / (1 + d)) + 1 for w, d in df.items()}
            self._bags = [{w: c * self._idf[w] for w, c in bag.items()} for bag in counts]
        query = {w: c * self._idf.get(w, 0.0) for w, c in _bag(prompt).items()}
        relevance = [_cosine(query, bag) + (1.0 if category and e.category == category else 0.0)
                     + 1e-6 * rng.random() for bag, e in zip(self._bags, self.pool)]
        chosen: list[int] = []
        while len(chosen) < self.k:
            best = max(
                (i for i in range(len(self.pool)) if i not in chosen),
                key=lambda i: MMR_LAMBDA * relevance[i]
                - (1 - MMR_LAMBDA) * max((_cosine(self._bags[i], self._bags[j]) for j in chosen), default=0.0),
            )
            chosen.append(best)
        return [self.pool[i] for i in chosen]


_STOP_WORDS = frozenset(
    "the and for are but not you your with this that what how can why who when where which was were will would could "
    "should does did have has had from into about there their they them then than its it's our out all any one".split()
)


def _bag(text: str) -> dict[str, int]:
    """Lower-cased word counts, stop words left out, hyphenated words split ('false-premise': 'false', 'premise')."""
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(word) > 2 and word not in _STOP_WORDS:
            counts[word] = counts.get(word, 0) + 1
    return counts


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    if not dot:
        return 0.0
    return dot / (sum(v * v for v in a.values()) ** 0.5 * sum(v * v for v in b.values()) ** 0.5)


class PromptFormatter:
    """Renders generation prompts and engraving examples for one tokenizer, and extracts answers from raw output."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        principles: Principles,
        prompt_format: str = "auto",
        use_internal_thoughts: bool = False,
        extra_stop_strings: Sequence[str] | None = None,
    ):
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ValueError(
                "`prompt_format='chat'` but the tokenizer has no chat template. Use `prompt_format='plain'` (or "
                "'auto'), or set a template with `chat_template_path`."
            )
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"`prompt_format` must be 'auto', 'chat' or 'plain'; got {prompt_format!r}.")
        self.tokenizer = tokenizer
        self.principles = principles
        self.uses_chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        self.use_internal_thoughts = use_internal_thoughts
        self.stop_strings = self._stop_strings(extra_stop_strings or ())

    # ---- generation -------------------------------------------------------------------------------------------------
    def _demonstration(self, exemplar: Exemplar) -> str:
        if self.use_internal_thoughts and exemplar.internal_thoughts:
            return f"{THOUGHTS_TAG} {exemplar.internal_thoughts}\n{ANSWER_TAG} {exemplar.response}"
        return exemplar.response

    def chat_messages(self, user_prompt: str, exemplars: Sequence[Exemplar]) -> list[dict[str, str]]:
        """The conversation of a generation prompt: the principles, each exemplar as a finished turn, the prompt."""
        messages = [{"role": "system", "content": self.principles.render()}]
        for exemplar in exemplars:
            messages.append({"role": "user", "content": exemplar.prompt})
            messages.append({"role": "assistant", "content": self._demonstration(exemplar)})
        messages.append({"role": "user", "content": user_prompt})
        return messages

    def generation_prompt(self, user_prompt: str, exemplars: Sequence[Exemplar]) -> str:
        """Principles, then each exemplar as a finished turn, then the user's prompt awaiting an answer."""
        header = self.principles.render()
        if self.uses_chat:
            messages = self.chat_messages(user_prompt, exemplars)
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        turns = [header, ""]
        for exemplar in exemplars:
            turns += [f"{PLAIN_USER_TAG} {exemplar.prompt}", f"{PLAIN_ASSISTANT_TAG} {self._demonstration(exemplar)}", ""]
        turns += [f"{PLAIN_USER_TAG} {user_prompt}", PLAIN_ASSISTANT_TAG]
        return "\n".join(turns)

    def _stop_strings(self, extra: Sequence[str]) -> tuple[str, ...]:
        """Strings at which an answer ends: the next turn marker, special tokens, and the user's extra ones."""
        stops = list(extra)
        if self.uses_chat:
            stops += [t for t in self.tokenizer.all_special_tokens if t and t not in stops]
        else:
            stops += [PLAIN_USER_TAG, "\n###"]
            if self.tokenizer.eos_token:
                stops.append(self.tokenizer.eos_token)
        return tuple(dict.fromkeys(s for s in stops if s))

    def extract_response(self, raw_output: str) -> str:
        """The answer inside a raw continuation: cut at the first stop string, drop internal thoughts, strip."""
        cut = len(raw_output)
        for stop in self.stop_strings:
            index = raw_output.find(stop)
            if index != -1:
                cut = min(cut, index)
        text = raw_output[:cut]
        if THOUGHTS_TAG in text or (self.use_internal_thoughts and ANSWER_TAG in text):
            answer_at = text.find(ANSWER_TAG)
            text = text[answer_at + len(ANSWER_TAG) :] if answer_at != -1 else ""
        return text.strip()

    # ---- engraving ----------------------------------------------------------------------------------------------------
    def engraving_example(
        self, user_prompt: str, response: str, shot: Exemplar | None = None
    ) -> dict[str, str | list[dict[str, str]]]:
        """A prompt-completion training row: no principles, at most one exemplar turn, the answer as completion."""
        if self.uses_chat:
            messages = []
            if shot is not None:
                messages += [
                    {"role": "user", "content": shot.prompt},
                    {"role": "assistant", "content": shot.response},
                ]
            messages.append({"role": "user", "content": user_prompt})
            return {"prompt": messages, "completion": [{"role": "assistant", "content": response}]}
        prefix = f"{PLAIN_USER_TAG} {shot.prompt}\n{PLAIN_ASSISTANT_TAG} {shot.response}\n\n" if shot else ""
        return {"prompt": f"{prefix}{PLAIN_USER_TAG} {user_prompt}\n{PLAIN_ASSISTANT_TAG}", "completion": f" {response}"}

    def turns_prompt(self, user_prompt: str, exemplars: Sequence[Exemplar] = ()) -> str:
        """The request after `exemplars` as finished turns, without principles (the engraving layout with k shots):
        how the aligned-data retries ask (`trl_soft.aligned`)."""
        if not self.uses_chat:
            turns = [f"{PLAIN_USER_TAG} {e.prompt}\n{PLAIN_ASSISTANT_TAG} {e.response}\n\n" for e in exemplars]
            return "".join(turns) + f"{PLAIN_USER_TAG} {user_prompt}\n{PLAIN_ASSISTANT_TAG}"
        messages = [m for e in exemplars for m in ({"role": "user", "content": e.prompt},
                                                   {"role": "assistant", "content": e.response})]
        messages.append({"role": "user", "content": user_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @cached_property
    def answer_end_ids(self) -> frozenset[int]:
        """The token ids written after an answer's text: the chat template's end of the assistant turn (e.g.
        `<|im_end|>` and its newline) and the end-of-sequence token."""
        ids = {self.tokenizer.eos_token_id} - {None}
        if self.uses_chat:
            mark = "\u2063answer-end\u2063"
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": mark}], tokenize=False
            )
            ids |= set(self.tokenizer(text[text.rindex(mark) + len(mark):], add_special_tokens=False).input_ids)
        return frozenset(ids)

    def without_answer_end(self, labels: Sequence[int]) -> list[int]:
        """`labels` of a training row with its answer's end (the trailing `answer_end_ids`) left out of the loss (-100):
        how an answer cut at the token budget is trained (`filter_truncation='prefix'`)."""
        labels = list(labels)
        k = len(labels)
        while k > 0 and (labels[k - 1] == -100 or labels[k - 1] in self.answer_end_ids):
            k -= 1
        return labels[:k] + [-100] * (len(labels) - k)

    def unended(self, dataset, cut: Sequence[bool]):
        """A tokenized training `dataset` (a `labels` column) whose rows marked in `cut` are trained without their
        answer's end (`without_answer_end`)."""
        return dataset.map(
            lambda row, i: {"labels": self.without_answer_end(row["labels"]) if cut[i] else row["labels"]},
            with_indices=True, desc="cut answers trained without their end",
        )

    def engraving_prompt(self, user_prompt: str, shot: Exemplar | None = None) -> str:
        """The engraving prompt as text, awaiting an answer: how the trained model is asked (no principles)."""
        example = self.engraving_example(user_prompt, "", shot)
        if not self.uses_chat:
            return example["prompt"]
        return self.tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)

    def engraving_texts(self, user_prompt: str, response: str, shot: Exemplar | None = None) -> tuple[str, str]:
        """The engraving example as (prompt text, completion text), exactly as training tokenizes it; for scoring."""
        example = self.engraving_example(user_prompt, response, shot)
        if not self.uses_chat:
            eos = self.tokenizer.eos_token or ""
            return example["prompt"], example["completion"] + eos
        prompt_text = self.tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        full_text = self.tokenizer.apply_chat_template(
            example["prompt"] + example["completion"], tokenize=False, add_generation_prompt=False
        )
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "The chat template renders the prompt differently with and without the answer, so the answer cannot "
                "be scored separately. Use `prompt_format='plain'` or a template with a stable prefix."
            )
        return prompt_text, full_text[len(prompt_text) :]


# ---- lengths ------------------------------------------------------------------------------------------------------
def model_context_length(model) -> int | None:
    """The most tokens `model` handles (its config's `max_position_embeddings`), from a loaded model or from the
    config alone of a folder or hub id (no weights); None when it cannot be read (offline, no config)."""
    config = getattr(model, "config", None)
    if isinstance(model, str):
        try:
            config = AutoConfig.from_pretrained(model)
        except Exception:  # no config to be had: the lengths are then left to the engine
            return None
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], special: bool = False) -> list[int]:
    """Token counts of `texts` (with the tokenizer's own special tokens when `special`)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]] if texts else []


def check_lengths(
    formatter: PromptFormatter,
    prompts: Sequence[str],
    rounds: Sequence[Sequence[int]],
    sampler: ExemplarSampler,
    max_length: int | None,
    max_new_tokens: int,
    context_length: int | None,
    engraving_shot: Exemplar | None = None,
    engine_limit: int | None = None,
) -> int:
    """Refuse, with the tokenizer alone (before any model loads), prompts a run could not answer or train on:

    - a generation prompt (principles, the exemplars the sampler draws for it, the prompt) that with
      `max_new_tokens` is longer than the model's context (`context_length`: `model_context_length`; None: unknown)
      or than the engine's (`engine_limit`: an explicit `vllm_max_model_len`), naming the prompt row and the limit;
    - then a `max_length` (None skips this) too small to hold every prompt's engraving prompt and one answer token:
      every answer to that prompt would be cut off. The error names the smallest `max_length` that holds them all.

    `prompts` is the prompt column, `rounds` the rows each round answers (round 1 first), as `RoundSettings` splits
    them; the exemplars are the ones `sampler` gives those rounds. Returns the longest generation prompt in tokens
    (0 without prompts), from which the engine's `max_model_len` is sized."""
    rows = sorted({i for chunk in rounds for i in chunk})
    longest = 0
    if rows:
        pairs = [(t, i) for t, chunk in enumerate(rounds, start=1) for i in chunk]
        texts = [formatter.generation_prompt(prompts[i], sampler.sample(t, i, prompts[i])) for t, i in pairs]
        lengths = count_tokens(formatter.tokenizer, texts)
        worst = max(range(len(pairs)), key=lengths.__getitem__)
        longest = lengths[worst]
        limits = [n for n in (context_length, engine_limit) if n is not None]
        limit = min(limits) if limits else None
        if limit is not None and longest + max_new_tokens > limit:
            (round_index, row), too_long = pairs[worst], sum(n + max_new_tokens > limit for n in lengths)
            head = (
                f"Prompt row {row} does not fit the model's context in round {round_index}: its generation prompt "
                f"(principles, {sampler.k} exemplars, the prompt) is {longest} tokens, and with "
                f"`generation_max_new_tokens`={max_new_tokens} it needs {longest + max_new_tokens}, more than "
            )
            tail = (
                f"; {too_long} of {len(pairs)} generation prompts are too long. Shorten or drop that prompt, or lower "
                "`num_exemplars` or `generation_max_new_tokens` (or use shorter principles, `principles_path`)."
            )
            if engine_limit is not None and limit == engine_limit and (context_length is None or engine_limit < context_length):
                raise ValueError(
                    f"{head}`vllm_max_model_len`={engine_limit}, the longest prompt plus answer the vLLM engine takes{tail}"
                    f" Or raise `vllm_max_model_len` to at least {longest + max_new_tokens}, or leave it unset (the run "
                    "then sizes it to its longest prompt plus answer)."
                )
            raise ValueError(
                f"{head}the {context_length} tokens the model takes (its `max_position_embeddings`){tail}"
            )
    if max_length is not None and rows:
        texts = [formatter.engraving_prompt(prompts[i], engraving_shot) for i in rows]
        lengths = count_tokens(formatter.tokenizer, texts, special=not formatter.uses_chat)
        longest = max(range(len(rows)), key=lengths.__getitem__)
        if lengths[longest] >= max_length:
            too_long = sum(n >= max_length for n in lengths)
            raise ValueError(
                f"`max_length`={max_length} cannot hold the prompt of row {rows[longest]} as it is trained on "
                f"({lengths[longest]} tokens without principles), so every answer to it would be cut off "
                f"({too_long} of {len(rows)} prompts are that long). The smallest `max_length` that holds every prompt "
                f"with room for an answer is {lengths[longest] + 1}; {lengths[longest] + max_new_tokens} keeps whole "
                f"answers (`generation_max_new_tokens`={max_new_tokens}). Raise `max_length` (or set it to None), or "
                "shorten that prompt."
            )
    return longest


# Tokens added to a prompt bound for the seams between its parts (a word and the next may tokenize together).
BOUND_SLACK = 32


def prompt_bound(
    formatter: PromptFormatter, prompts: Sequence[str], pool: Sequence[Exemplar], k: int,
    engraving_shot: Exemplar | None = None,
) -> int:
    """An upper bound, in tokens, on any prompt built from one of `prompts` (a generation prompt with any k exemplars
    of `pool`, or an engraving prompt): the longest of them with the k longest exemplars, plus `BOUND_SLACK`. Used to
    size the engine for the prompts that are not counted one by one (behaviour sets, diagnostics samples); 0 without
    prompts."""
    if not prompts:
        return 0
    tokenizer = formatter.tokenizer
    lengths = count_tokens(tokenizer, prompts)
    longest = prompts[max(range(len(prompts)), key=lengths.__getitem__)]
    shots = count_tokens(tokenizer, [" ".join((e.prompt, e.internal_thoughts, e.response)) for e in pool])
    widest = [pool[i] for i in sorted(range(len(pool)), key=shots.__getitem__, reverse=True)[:k]]
    texts = [formatter.generation_prompt(longest, widest), formatter.engraving_prompt(longest, engraving_shot)]
    return max(count_tokens(tokenizer, texts, special=not formatter.uses_chat)) + BOUND_SLACK
