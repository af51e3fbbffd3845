"""Sum of log-probabilities of a completion given its prompt, batched, without gradients.

Tokenisation follows what training does: the prompt and prompt+completion are tokenised as whole strings and the
completion tokens are those after the prompt's tokens (falling back to tokenising the completion alone when a
tokenizer merges across the boundary). Pairs are sorted by length to keep padding small, and sharded across
processes when there are several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..distributed import map_sharded
from ..models import eval_mode, pad_id


@dataclass(frozen=True)
class CompletionScore:
    log_likelihood: float
    num_tokens: int
    entropy: float | None = None  # summed over the completion's positions, when asked for

    @property
    def mean_entropy(self) -> float | None:
        return None if self.entropy is None else self.entropy / max(self.num_tokens, 1)

    @property
    def nll_per_token(self) -> float:
        return -self.log_likelihood / max(self.num_tokens, 1)


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) such that their concatenation is how the pair is fed to the model."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return prompt_ids, full_ids[len(prompt_ids) :]
    return prompt_ids, tokenizer(completion, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _score_shard(
    model: PreTrainedModel,
    pairs: list[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    with_entropy: bool = False,
) -> list[CompletionScore]:
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    scores: list[CompletionScore | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        sequences = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding keeps positions identical to unpadded scoring
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
        for row, i in enumerate(batch):
            prompt_len, completion_len = len(pairs[i][0]), len(pairs[i][1])
            # logits at position p predict token p+1
            positions = torch.arange(prompt_len - 1, prompt_len + completion_len - 1, device=logits.device)
            targets = torch.tensor(pairs[i][1], device=logits.device)
            all_log_probs = torch.log_softmax(logits[row, positions], dim=-1)
            log_probs = all_log_probs.gather(1, targets[:, None]).squeeze(1)
            entropy = None
            if with_entropy:  # entropy of the model's next-token distribution at each completion position
                entropy = float(-(all_log_probs.exp() * all_log_probs).sum())
            scores[i] = CompletionScore(float(log_probs.sum()), completion_len, entropy)
    return scores  # type: ignore[return-value]


def score_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 8,
    with_entropy: bool = False,
) -> list[CompletionScore]:
    """Log-likelihood of each completion given its prompt, in input order (eval mode restored afterwards).

    With `with_entropy`, also the summed entropy of the model's predictive distribution over the completion's
    positions (how sharp the model is where it wrote those tokens)."""
    tokenized = []
    for index, (prompt, completion) in enumerate(pairs):
        prompt_ids, completion_ids = tokenize_pair(tokenizer, prompt, completion)
        if not prompt_ids or not completion_ids:
            raise ValueError(f"Pair {index} has an empty prompt or completion after tokenisation; cannot score it.")
        tokenized.append((prompt_ids, completion_ids))
    pad = pad_id(tokenizer)
    with eval_mode(model):
        return map_sharded(tokenized, lambda shard: _score_shard(model, shard, batch_size, pad, with_entropy))
