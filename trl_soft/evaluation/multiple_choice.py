"""Multiple-choice log-likelihood scoring with lm-evaluation-harness's conventions, computed once per shared context.

lm-evaluation-harness scores a choice as the summed log-probability of its tokens after the context, where:
- trailing whitespace of the context moves to the front of the continuation;
- the context is tokenised alone, the continuation tokens are those of `context + continuation` after the context's
  length, and the model reads `context_tokens + continuation_tokens` (no BOS unless the tokenizer adds one itself);
- an empty context is replaced by the end-of-text token.

It feeds every (context, choice) pair through the model in full, so a 6-shot primer of a few hundred tokens is
recomputed for every choice of every question. Here the work is shared instead:
1. the token prefix common to every context of a run (the few-shot primer) is encoded once, and its KV cache is
   reused by everything after it;
2. a short remaining context (a TruthfulQA question) is read together with each of its choices, as rows of large
   length-sorted batches (large batches are what make a CPU or GPU fast);
3. a long remaining context (an HHH dialogue) is encoded once and all its choices read in one batch on copies of
   its cache.
The log-probabilities are the same ones (up to float rounding); the compute drops by roughly the primer length over
the question-plus-choice length.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..distributed import is_main_process, map_sharded
from ..generation import expanded_cache, shared_prefix_cache
from ..models import eval_mode, pad_id
from ..progress import bar as phase_bar  # inside a phase: its one bar, not one per call


@dataclass(frozen=True)
class ChoiceRequest:
    """One context and the continuations to score after it."""

    context: str
    continuations: tuple[str, ...]


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-evaluation-harness builds them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids) :]
    if not context_ids:
        context_ids = [tokenizer.eos_token_id]
    return context_ids, continuation_ids


@dataclass
class _EncodedRequest:
    context_ids: list[int]
    continuations: list[list[int]]


def _encode(tokenizer: PreTrainedTokenizerBase, request: ChoiceRequest) -> _EncodedRequest:
    pairs = [encode_pair(tokenizer, request.context, c) for c in request.continuations]
    context_ids = pairs[0][0]
    for index, (ids, continuation_ids) in enumerate(pairs):
        if ids != context_ids:  # only a context ending in whitespace could differ, and it never does per choice
            raise ValueError(f"Context tokenised differently for choice {index} of {request.context[:60]!r}.")
        if not continuation_ids:
            raise ValueError(
                f"Choice {index} ({request.continuations[index]!r}) of context {request.context[:60]!r} is empty after "
                "tokenisation; every choice needs at least one token."
            )
    return _EncodedRequest(context_ids, [c for _, c in pairs])


def _forward(model, input_ids, attention_mask, position_ids, cache, logits_to_keep: int = 0):
    """One forward on top of `cache`; `logits_to_keep=1` skips the LM head everywhere but the last position."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )


# A context whose own tokens (after the shared prefix) are at most this long is re-read with each of its choices in
# big flat batches; a longer one is encoded once and its cache shared by its choices.
FLAT_CONTEXT_TOKENS = 64


def _continuation_log_prob(log_probs_source: torch.Tensor, start: int, continuation: list[int]) -> float:
    """Sum of log p(continuation[j]) read from logits rows start .. start+len-1 (row i predicts the next token)."""
    rows = log_probs_source[start : start + len(continuation)].float()
    targets = torch.tensor(continuation, device=rows.device)[:, None]
    return (rows.gather(1, targets).squeeze(1) - torch.logsumexp(rows, dim=-1)).sum().item()


@torch.no_grad()
def _score_flat(model, requests, indices, prefix_len, prefix_cache, pad_id, max_rows, results, progress) -> None:
    """Every (own context + choice) of the given requests as one row; rows batched by length on the shared prefix."""
    device = next(model.parameters()).device
    rows = []  # (request index, choice index, own context length, tokens)
    for k in indices:
        own = requests[k].context_ids[prefix_len:]
        for j, continuation in enumerate(requests[k].continuations):
            rows.append((k, j, len(own), own + continuation))
        results[k] = [0.0] * len(requests[k].continuations)
    rows.sort(key=lambda row: -len(row[3]))
    for start in range(0, len(rows), max_rows):
        batch = rows[start : start + max_rows]
        width = len(batch[0][3])
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for r, (_, _, _, tokens) in enumerate(batch):  # right padding: real tokens keep their positions
            input_ids[r, : len(tokens)] = torch.tensor(tokens)
            mask[r, prefix_len : prefix_len + len(tokens)] = 1
        positions = torch.arange(prefix_len, prefix_len + width, device=device)[None].expand(len(batch), -1)
        logits = _forward(
            model, input_ids.to(device), mask.to(device), positions, expanded_cache(prefix_cache, len(batch))
        ).logits
        for r, (k, j, own_len, tokens) in enumerate(batch):
            continuation = tokens[own_len:]
            results[k][j] = _continuation_log_prob(logits[r], own_len - 1, continuation)
        progress.update(len(batch))


@torch.no_grad()
def _score_with_context_cache(model, request, prefix_len, prefix_cache, pad_id, max_rows, progress) -> list[float]:
    """Encode the request's own context once, then read its choices in batches on copies of that cache."""
    device = next(model.parameters()).device
    own = request.context_ids[prefix_len:]
    context_len = len(request.context_ids)
    out = _forward(
        model,
        torch.tensor([own], device=device),
        torch.ones((1, context_len), dtype=torch.long, device=device),
        torch.arange(prefix_len, context_len, device=device)[None],
        copy.deepcopy(prefix_cache) if prefix_cache is not None else None,
        logits_to_keep=1,
    )
    first_logits = out.logits[0, -1:]
    scores: list[float] = []
    for start in range(0, len(request.continuations), max_rows):
        chunk = request.continuations[start : start + max_rows]
        totals = [_continuation_log_prob(first_logits, 0, c[:1]) for c in chunk]
        width = max(len(c) for c in chunk) - 1
        if width > 0:
            # Feed every token but the last: position j predicts token j+1 of the continuation.
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), context_len + width), dtype=torch.long)
            mask[:, :context_len] = 1
            for r, c in enumerate(chunk):
                input_ids[r, : len(c) - 1] = torch.tensor(c[:-1])
                mask[r, context_len : context_len + len(c) - 1] = 1
            positions = torch.arange(context_len, context_len + width, device=device)[None].expand(len(chunk), -1)
            cache = expanded_cache(out.past_key_values, len(chunk))
            logits = _forward(model, input_ids.to(device), mask.to(device), positions, cache).logits
            for r, c in enumerate(chunk):
                if len(c) > 1:
                    totals[r] += _continuation_log_prob(logits[r], 0, c[1:])
        scores.extend(totals)
        progress.update(len(chunk))
    return scores


@torch.no_grad()
def _score_shard(
    model: PreTrainedModel,
    requests: list[_EncodedRequest],
    pad_id: int,
    max_batch: int,
    show_progress: bool,
    desc: str,
) -> list[list[float]]:
    # Unlike generation, no MIN_PREFIX_TOKENS floor and no off switch: any shared prefix is cached. A short one is
    # still read once instead of once per choice, and the prefix length also decides which contexts are read flat
    # (FLAT_CONTEXT_TOKENS), so a floor would change that split and the scores' float rounding.
    prefix_len, prefix_cache = shared_prefix_cache(model, [r.context_ids for r in requests])
    results: list[list[float] | None] = [None] * len(requests)
    flat = [k for k, r in enumerate(requests) if len(r.context_ids) - prefix_len <= FLAT_CONTEXT_TOKENS]
    progress = phase_bar(
        total=sum(len(r.continuations) for r in requests), desc=desc, disable=not show_progress, unit="choice"
    )
    _score_flat(model, requests, flat, prefix_len, prefix_cache, pad_id, max_batch, results, progress)
    for k in sorted(set(range(len(requests))) - set(flat)):
        results[k] = _score_with_context_cache(
            model, requests[k], prefix_len, prefix_cache, pad_id, max_batch, progress
        )
    progress.close()
    return results  # type: ignore[return-value]


def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[ChoiceRequest],
    max_batch: int = 32,
    desc: str = "Scoring",
) -> list[list[float]]:
    """Summed log-likelihood of every continuation of every request, in input order; sharded across processes."""
    encoded = [_encode(tokenizer, r) for r in requests]
    pad = pad_id(tokenizer)
    with eval_mode(model):
        return map_sharded(encoded, lambda shard: _score_shard(model, shard, pad, max_batch, is_main_process(), desc))
