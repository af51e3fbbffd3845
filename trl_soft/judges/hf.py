"""`HFJudge`: a local transformers causal LM as judge, pointwise (every criterion of `CRITERIA`) and pairwise.

The judge prompt (`prompts.py`) is rendered with the tokenizer's chat template when it has one, as plain text
otherwise. No text is generated: the verdict is read off the next-token logits, P(yes) being the softmax over the
logits of the yes-word tokens against the no-word tokens ("Yes", " Yes", "yes", ... vs "No", ...: those that are one
token), and pairwise P(A) the same over "A" against "B". Batches are left-padded with position ids counted from
each row's first real token, so a verdict does not depend on the batch it was computed in.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import JudgeError
from ..models import load_model_and_tokenizer, pad_id, resolve_model_path
from ..progress import bar as phase_bar  # inside a phase: its one bar, not one per call
from .base import CRITERIA, Verdict, check_criterion, check_lengths
from .prompts import (
    FIRST_VARIANTS,
    NO_VARIANTS,
    PROMPT_VERSION,
    SECOND_VARIANTS,
    YES_VARIANTS,
    Messages,
    pairwise_messages,
    plain_text,
    pointwise_messages,
)

PROGRESS_MIN_ITEMS = 64  # lists shorter than this get no progress bar


def first_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    """The token ids of the variants that are one token; the first token of each variant if none is."""
    encoded = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in variants]
    encoded = [e for e in encoded if e]
    whole = [e[0] for e in encoded if len(e) == 1]
    return list(dict.fromkeys(whole or [e[0] for e in encoded]))


def answer_token_ids(tokenizer: Any, positive: Sequence[str], negative: Sequence[str]) -> tuple[list[int], list[int]]:
    """(positive ids, negative ids): first tokens of the variants, without the ids both sides share."""
    yes, no = first_token_ids(tokenizer, positive), first_token_ids(tokenizer, negative)
    shared = set(yes) & set(no)
    yes, no = [i for i in yes if i not in shared], [i for i in no if i not in shared]
    if not yes or not no:
        raise JudgeError(
            f"The judge's tokenizer cannot tell {list(positive)} from {list(negative)} by their first token; use "
            "another `judge_model`."
        )
    return yes, no


class HFJudge:
    """A causal LM judging by next-token probabilities; see the module docstring.

    `model` is a hub id, a local folder or "embedded" (loaded in float32 on CPU), or a loaded model given with its
    `tokenizer`. `name` defaults to `hf-<prompt version>:<model path>`."""

    def __init__(
        self,
        model: Any = "embedded",
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        name: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"`judge_batch_size` must be >= 1; got {batch_size}.")
        if isinstance(model, str):
            if tokenizer is not None:
                raise ValueError("Give HFJudge a model name with no tokenizer, or a loaded model with its tokenizer.")

            try:
                path = resolve_model_path(model)
                model, tokenizer = load_model_and_tokenizer(path, dtype=torch.float32)
            except (OSError, ValueError) as err:
                raise JudgeError(
                    f"`judge_model`: could not load {model!r} as a causal LM judge ({err}). Give a local model "
                    "folder, a hub id that is in the local cache, or 'embedded'."
                ) from err
        elif tokenizer is None:
            raise ValueError("HFJudge needs the tokenizer of the loaded model it is given.")
        else:
            path = getattr(model.config, "name_or_path", "") or type(model).__name__
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.path = str(path)
        self.name = name or f"hf-{PROMPT_VERSION}:{self.path}"
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.yes_ids, self.no_ids = answer_token_ids(tokenizer, YES_VARIANTS, NO_VARIANTS)
        self.first_ids, self.second_ids = answer_token_ids(tokenizer, FIRST_VARIANTS, SECOND_VARIANTS)
        pad = pad_id(tokenizer)
        self.pad_id = pad if pad is not None else 0
        accepted = inspect.signature(model.forward).parameters
        self._position_ids = "position_ids" in accepted
        self._logits_to_keep = "logits_to_keep" in accepted

    def criteria(self) -> tuple[str, ...]:
        return tuple(CRITERIA)

    def judge(self, criterion: str, prompts: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        check_criterion(self, criterion)
        check_lengths(prompts, answers)
        chats = [pointwise_messages(criterion, p, a) for p, a in zip(prompts, answers)]
        scored = self._score(chats, self.yes_ids, self.no_ids, f"Judging {criterion}")
        return [Verdict(p >= 0.5, p, top) for p, top in scored]

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        check_lengths(prompts, first, second)
        chats = [pairwise_messages(p, a, b) for p, a, b in zip(prompts, first, second)]
        return [p for p, _ in self._score(chats, self.first_ids, self.second_ids, "Comparing answers")]

    # ---- scoring --------------------------------------------------------------------------------------------------
    def render(self, chat: Messages) -> list[int]:
        """The judge prompt's token ids: chat template (which holds its special tokens) or plain text."""
        if self.has_chat_template:
            text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(plain_text(chat))["input_ids"]

    def _score(
        self, chats: list[Messages], positive: list[int], negative: list[int], desc: str
    ) -> list[tuple[float, str]]:
        """(P(positive), the most likely next token) per chat, longest first in batches, returned in order."""
        encoded = [self.render(chat) for chat in chats]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[tuple[float, str]] = [(0.0, "")] * len(encoded)
        device = next(self.model.parameters()).device
        with torch.inference_mode(), phase_bar(
            total=len(encoded), desc=desc, unit="item", disable=len(encoded) < PROGRESS_MIN_ITEMS
        ) as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                logits = self._last_logits([encoded[i] for i in batch], device)
                pos = torch.logsumexp(logits[:, positive], dim=-1)
                neg = torch.logsumexp(logits[:, negative], dim=-1)
                p_pos = torch.sigmoid(pos - neg).tolist()
                top = self.tokenizer.convert_ids_to_tokens(logits.argmax(dim=-1).tolist())
                for index, p, token in zip(batch, p_pos, top):
                    results[index] = (float(p), self.tokenizer.convert_tokens_to_string([token]))
                progress.update(len(batch))
        return results

    def _last_logits(self, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if self._position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :].float()
