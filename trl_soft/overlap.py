"""Training prompts that are evaluation items: found before round 1, so a run never trains on what it is judged by.

Two texts match when their normalised forms (lower case, every run of non-alphanumerics one space) are equal, or when
most of the shorter one's word 8-grams (`SHARE`) occur in the other (a question quoted inside a longer prompt, or
reworded at the edges). Texts shorter than 8 words match only exactly. An index of the evaluation items' 8-grams
makes the check linear in the total text.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

N = 8
SHARE = 0.5
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def _grams(words: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i: i + N]) for i in range(len(words) - N + 1)}


def find_overlaps(prompts: Sequence[str], items: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """`(prompt, source, item)` for every training prompt that matches an evaluation item (`items`: `(source, text)`
    pairs, e.g. `('behaviour:harmful', ...)`), at most one match per prompt, in prompt order."""
    exact: dict[str, tuple[str, str]] = {}
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    item_grams: list[set[tuple[str, ...]]] = []
    for k, (source, text) in enumerate(items):
        norm = normalise(text)
        exact.setdefault(norm, (source, text))
        grams = _grams(norm.split())
        item_grams.append(grams)
        for gram in grams:
            index[gram].append(k)
    found = []
    for prompt in prompts:
        norm = normalise(prompt)
        if norm in exact:
            found.append((prompt, *exact[norm]))
            continue
        grams = _grams(norm.split())
        if not grams:
            continue
        shared: dict[int, int] = defaultdict(int)
        for gram in grams:
            for k in set(index.get(gram, ())):
                shared[k] += 1
        for k, count in shared.items():
            if count >= SHARE * min(len(grams), len(item_grams[k])):
                found.append((prompt, items[k][0], items[k][1]))
                break
    return found
