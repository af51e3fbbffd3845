"""Batched generation for regeneration rounds, on one process or sharded across many.

The token prefix that all prompts share (the principles header; with fixed exemplars, the exemplars too) is encoded
once and its KV cache reused by every batch, so each prompt costs only its own tokens. Prompts are sorted by the
length of the rest so that each batch holds prompts of similar length (little padding), split
between processes in equal-sized slices (`distributed.map_sharded`), generated without gradients in eval mode under
TRL's `unwrap_model_for_generation` (which gathers ZeRO-3 parameters and pauses gradient checkpointing), gathered
with `gather_object`, and returned in the caller's order.
"""

from __future__ import annotations

import contextlib
import copy
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria
from trl.models import unwrap_model_for_generation

from .distributed import is_main_process, map_sharded
from .models import eval_mode, pad_id
from .progress import bar as phase_bar  # inside a phase: its one bar, not one per call
from .settings import ConcernSettings, read_from, setting


@dataclass(frozen=True)
class GenerationSettings(ConcernSettings):
    """How answers are sampled. `SOFTConfig` builds the regeneration settings from its `generation_*` fields; the
    diagnostics and the behaviour evaluation derive theirs with `dataclasses.replace` (their own length and seed)."""

    # Batching and the shared-prefix cache change how fast answers come, not what they say.
    NOT_FINGERPRINTED = frozenset({"batch_size", "prefix_cache"})

    max_new_tokens: int = setting(
        256, "Maximum new tokens per self-generated answer.",
        name="generation_max_new_tokens",
    )
    temperature: float = setting(
        0.7, "Sampling temperature for regeneration; 0 means greedy decoding (chosen here: 0.7).",
        name="generation_temperature",
    )
    top_p: float = setting(0.9, "Nucleus sampling top-p (chosen here: 0.9).", name="generation_top_p")
    batch_size: int = setting(
        8, "Prompts per generate() call on each process (left-padded, length-bucketed).",
        name="generation_batch_size",
    )
    stop_strings: tuple[str, ...] = setting(
        None, "Extra strings that end an answer (besides EOS and the next turn marker of the prompt format).",
        name="generation_stop_strings",
    )
    seed: int = read_from("seed", 42)
    prefix_cache: bool = setting(
        True,
        "Encode the token prefix shared by all generation prompts (the principles header) once and reuse "
        "its KV cache for every batch. Same answers, less compute (1.6x faster on the demo).",
        name="generation_prefix_cache",
    )
    # best-of-n: samples per prompt in a regeneration round
    per_prompt: int = setting(
        1,
        "Best-of-n: answers sampled per prompt (n). The filters and the principle gate judge every sample "
        "and the round trains on the best passing one per prompt: the easiest by the curriculum's score, else "
        "the first (docs/behaviour.md). Needs sampling (`generation_temperature` > 0).",
        name="generations_per_prompt",
    )

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise self.field_error("max_new_tokens", f"must be >= 1; got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise self.field_error("temperature", f"must be >= 0 (0 = greedy); got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise self.field_error("top_p", f"must be in (0, 1]; got {self.top_p}.")
        if self.batch_size < 1:
            raise self.field_error("batch_size", f"must be >= 1; got {self.batch_size}.")
        if self.per_prompt < 1:
            raise self.field_error("per_prompt", f"must be >= 1 (answers sampled per prompt); got {self.per_prompt}.")
        if self.per_prompt > 1 and self.temperature == 0:
            raise self.field_error(
                "per_prompt", f"is {self.per_prompt}, but `generation_temperature=0` decodes greedily, so the "
                f"{self.per_prompt} samples of a prompt would be identical: set `generation_temperature` > 0 (e.g. "
                "0.7) or `generations_per_prompt=1`."
            )


# Below this many shared tokens, encoding the prefix separately saves less than it costs.
MIN_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class GenerationResult:
    """One continuation: its text, how many tokens it took, whether it ended by itself (EOS or a stop string), and
    its token ids (without the token that ended it)."""

    text: str
    num_tokens: int
    finished: bool
    token_ids: tuple[int, ...] = ()


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _generation_context(model, accelerator: Accelerator | None):
    if accelerator is None:
        return contextlib.nullcontext(model)

    return unwrap_model_for_generation(model, accelerator)


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to all sequences, leaving every sequence at least one token of its own."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for position in range(max(limit, 0)):
        token = first[position]
        if any(s[position] != token for s in sequences[1:]):
            return position
    return max(limit, 0)


@torch.no_grad()
def shared_prefix_cache(model: PreTrainedModel, sequences: Sequence[Sequence[int]], min_tokens: int = 1):
    """(length, KV cache) of the token prefix all `sequences` share (`shared_prefix_length`), encoded once;
    (0, None) for fewer than two sequences or a prefix shorter than `min_tokens`. Each batch reads on a copy of the
    cache (`expanded_cache`). Used by generation and by multiple-choice scoring (`evaluation/multiple_choice.py`)."""
    prefix_len = shared_prefix_length(sequences) if len(sequences) > 1 else 0
    if prefix_len < min_tokens:
        return 0, None
    device = next(model.parameters()).device
    ids = torch.tensor([list(sequences[0][:prefix_len])], dtype=torch.long, device=device)
    return prefix_len, model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values


_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_string_criteria(tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]) -> StoppingCriteriaList:
    """The stopping criterion for `stop_strings`, built once per tokenizer and set of strings. Passing
    `stop_strings=` to `generate` rebuilds it on every call: transformers caches it under the vocabulary in
    `get_vocab()` order, which a fast tokenizer returns differently each time, so the cache never hits and every
    call re-walks the whole vocabulary (about 0.5 s for SmolLM2's 49k tokens, on every batch). A tokenizer that gains
    tokens later gets a new one."""
    if not stop_strings:
        return StoppingCriteriaList()
    built = _STOP_CRITERIA.setdefault(tokenizer, {})
    key = (tuple(stop_strings), len(tokenizer))
    if key not in built:
        built[key] = StopStringCriteria(tokenizer, list(stop_strings))
    return StoppingCriteriaList([built[key]])


def expanded_cache(cache, batch: int):
    """A copy of `cache` (one row) repeated for `batch` rows, leaving `cache` itself for the next batch; None stays
    None."""
    if cache is None:
        return None
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(batch)
    return copied


@torch.no_grad()
def _generate_shard(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenerationSettings,
    desc: str,
    show_progress: bool,
) -> list[GenerationResult]:
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    device = next(model.parameters()).device
    # Unlike multiple-choice scoring (see `_score_shard` there), generation can switch the cache off
    # (`prefix_cache`) and leaves a prefix shorter than MIN_PREFIX_TOKENS uncached.
    prefix_len, prefix_cache = (
        shared_prefix_cache(model, encoded, MIN_PREFIX_TOKENS) if settings.prefix_cache else (0, None)
    )
    prefix = torch.tensor(encoded[0][:prefix_len], dtype=torch.long)
    suffixes = [ids[prefix_len:] for ids in encoded]

    batches = _length_sorted_batches([len(ids) for ids in suffixes], settings.batch_size)
    results: list[GenerationResult | None] = [None] * len(prompts)
    pad = pad_id(tokenizer)
    eos_ids = model.generation_config.eos_token_id
    eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids or [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    terminal_ids = eos_ids | {pad}  # rows halted by a stop string are filled with padding afterwards
    stopping = stop_string_criteria(tokenizer, settings.stop_strings)
    sampling = settings.temperature > 0
    progress = phase_bar(total=len(prompts), desc=desc, disable=not show_progress, unit="prompt")
    new_tokens_total, started = 0, time.perf_counter()
    for batch_number, batch in enumerate(batches):
        width = max(len(suffixes[i]) for i in batch)
        # [shared prefix | left padding | own suffix]: padding sits between the cached prefix and each suffix; the
        # attention mask hides it and positions follow the mask, so every prompt sees exactly its own tokens.
        input_ids = torch.full((len(batch), prefix_len + width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        input_ids[:, :prefix_len] = prefix
        attention_mask[:, :prefix_len] = 1
        for row, i in enumerate(batch):
            ids = suffixes[i]
            input_ids[row, prefix_len + width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, prefix_len + width - len(ids) :] = 1
        cache_kwargs = {}
        if prefix_cache is not None:
            cache_kwargs["past_key_values"] = expanded_cache(prefix_cache, len(batch))
        # One seed per batch: the same prompts on the same process get the same samples, run after run.
        torch.manual_seed(settings.seed + batch_number)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            top_k=None,
            stopping_criteria=stopping,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids) or None,
            use_cache=True,
            **cache_kwargs,
        )
        for row, i in enumerate(batch):
            new_ids = output[row, prefix_len + width :].tolist()
            num_tokens = len(new_ids)
            finished = False
            for position, token in enumerate(new_ids):
                if token in terminal_ids:
                    num_tokens, finished = position, True
                    break
            text = tokenizer.decode(new_ids[:num_tokens], skip_special_tokens=False)
            if not finished and settings.stop_strings and any(s in text for s in settings.stop_strings):
                finished = True
            results[i] = GenerationResult(text, num_tokens, finished, tuple(new_ids[:num_tokens]))
            new_tokens_total += num_tokens
        progress.update(len(batch))
        progress.set_postfix(tok_per_s=f"{new_tokens_total / max(time.perf_counter() - started, 1e-9):.1f}")
    progress.close()
    return results  # type: ignore[return-value]


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenerationSettings,
    accelerator: Accelerator | None = None,
    desc: str = "Generating",
) -> list[GenerationResult]:
    """Continue every prompt; shard across processes when there are several, return in input order.

    The model's training/eval mode is restored afterwards. Each process gets a contiguous slice of at most
    ceil(P / N) prompts.
    """
    # Eval mode goes on the unwrapped model that generates, inside TRL's context (after it gathered the weights and
    # paused gradient checkpointing), and its own training mode comes back before the context closes.
    with _generation_context(model, accelerator) as unwrapped, eval_mode(unwrapped):
        return map_sharded(
            prompts,
            lambda shard: _generate_shard(
                unwrapped, tokenizer, shard, settings, desc=desc, show_progress=is_main_process()
            ),
        )
