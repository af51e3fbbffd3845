"""`CachedJudge`: a pointwise and/or a pairwise judge with an on-disk verdict cache, so that a resumed run (or a
second evaluation of the same answers) does not ask the judge again.

The cache is a JSONL file, one verdict a line, keyed by the sha256 of (judge name, criterion or "pairwise", prompt,
answers): a judge whose `name` changes (another model, another prompt version) misses every old entry. The name shows
the judge's URL redacted (`trl_soft.security.redact_url`), so no credential is written here. Only the misses go to the
wrapped judge, in one call per `judge` / `compare`; its verdicts are appended and the file is flushed and fsync'ed
before they are returned, so an interruption loses at most the call in progress. A truncated or unreadable line (the
write an interruption cut short) is skipped when the file is read, and the file need not exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..state import open_appending
from .base import PairwiseJudge, PointwiseJudge, Verdict, check_lengths

PAIRWISE = "pairwise"


def cache_key(judge_name: str, kind: str, prompt: str, *answers: str) -> str:
    """sha256 of the JSON list (judge name, kind, prompt, answers...): unambiguous whatever the texts hold."""
    text = json.dumps([judge_name, kind, prompt, *answers], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedJudge:
    """Wraps `pointwise` and/or `pairwise` with the verdict cache at `path`; counts `hits` and `misses` (items)."""

    def __init__(
        self, path: str | Path, pointwise: PointwiseJudge | None = None, pairwise: PairwiseJudge | None = None
    ):
        if pointwise is None and pairwise is None:
            raise ValueError("CachedJudge needs a pointwise judge, a pairwise judge or both.")
        self.path = Path(path)
        self.pointwise = pointwise
        self.pairwise = pairwise
        self.hits = 0
        self.misses = 0
        self.skipped_lines = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._needs_newline = False
        self._read()

    @property
    def name(self) -> str:
        return (self.pointwise or self.pairwise).name  # type: ignore[union-attr]

    def criteria(self) -> tuple[str, ...]:
        return self.pointwise.criteria() if self.pointwise is not None else ()

    def __len__(self) -> int:
        return len(self._entries)

    def judge(self, criterion: str, prompts: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        if self.pointwise is None:
            raise TypeError(f"This cached judge ({self.name}) has no pointwise judge.")
        check_lengths(prompts, answers)
        judge = self.pointwise
        keys = [cache_key(judge.name, criterion, p, a) for p, a in zip(prompts, answers)]

        def ask(missing: list[int]) -> list[dict[str, Any]]:
            verdicts = judge.judge(criterion, [prompts[i] for i in missing], [answers[i] for i in missing])
            return [{"label": v.label, "probability": v.probability, "evidence": v.evidence} for v in verdicts]

        rows = self._lookup(keys, criterion, judge.name, ask)
        return [Verdict(bool(r["label"]), r["probability"], r.get("evidence", "")) for r in rows]

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        if self.pairwise is None:
            raise TypeError(f"This cached judge ({self.name}) has no pairwise judge.")
        check_lengths(prompts, first, second)
        judge = self.pairwise
        keys = [cache_key(judge.name, PAIRWISE, p, a, b) for p, a, b in zip(prompts, first, second)]

        def ask(missing: list[int]) -> list[dict[str, Any]]:
            found = judge.compare(
                [prompts[i] for i in missing], [first[i] for i in missing], [second[i] for i in missing]
            )
            return [{"p_first": float(p)} for p in found]

        return [float(r["p_first"]) for r in self._lookup(keys, PAIRWISE, judge.name, ask)]

    # ---- the cache ------------------------------------------------------------------------------------------------
    def _lookup(self, keys: list[str], kind: str, judge_name: str, ask) -> list[dict[str, Any]]:
        missing: dict[str, int] = {}  # key -> first index asking for it (duplicates are judged once)
        for i, key in enumerate(keys):
            if key not in self._entries and key not in missing:
                missing[key] = i
        self.misses += sum(key in missing for key in keys)
        self.hits += len(keys) - sum(key in missing for key in keys)
        if missing:
            found = ask(list(missing.values()))
            if len(found) != len(missing):
                raise RuntimeError(f"The judge {judge_name!r} gave {len(found)} verdicts for {len(missing)} items.")
            new = [{"key": key, "judge": judge_name, "kind": kind, **row} for key, row in zip(missing, found)]
            self._append(new)
            for row in new:
                self._entries[row["key"]] = row
        return [self._entries[key] for key in keys]

    def _read(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "label" in row or "p_first" in row:
                    self._entries[row["key"]] = row
                    continue
            except (ValueError, KeyError, TypeError):
                pass
            self.skipped_lines += 1

    def _append(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if self._needs_newline:  # end the line an interruption cut short, so the first new one stands alone
            text = "\n" + text
        with open_appending(self.path) as handle:  # never through a link at its name
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._needs_newline = False
