"""The per-round summary table printed at the end of a run (and by `trl-soft report`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .state import SOFTState

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (metric key, header, format)
    ("round", "round", "{:d}"),
    ("prompts", "prompts", "{:d}"),
    ("kept", "kept", "{:d}"),
    ("mean_response_tokens", "resp tok", "{:.1f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("validation_nll", "val NLL", "{:.4f}"),
    ("seconds_generate", "gen s", "{:.0f}"),
    ("seconds_score", "score s", "{:.1f}"),
    ("seconds_train", "train s", "{:.0f}"),
    ("seconds_validate", "val s", "{:.0f}"),
)
# Shown only when some row has them (benchmarks are optional).
OPTIONAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sample_entropy", "entropy", "{:.3f}"),
    ("sample_distinct_2", "distinct-2", "{:.3f}"),
    ("sample_self_bleu", "self-BLEU", "{:.3f}"),
    ("sample_tokens", "sample tok", "{:.1f}"),
    ("truthfulqa_mc1", "TQA MC1", "{:.4f}"),
    ("truthfulqa_mc2", "TQA MC2", "{:.4f}"),
    ("hhh_overall", "HHH", "{:.4f}"),
    ("hhh_acc_norm_overall", "HHH norm", "{:.4f}"),
    ("seconds_benchmarks", "bench s", "{:.0f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_round_table(history: Sequence[dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """A Markdown table, one row per round (and a round-0 row for the base model when given)."""
    rows = ([baseline] if baseline else []) + list(history)
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in row for row in rows))
    headers = [header for _, header, _ in columns]
    cells = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def format_stop_line(state: SOFTState) -> str:
    """One sentence on why the rounds ended early and which round's weights are final ("" if they did not)."""
    if not state.stopped_early:
        return ""
    final = "the starting model" if state.final_round == 0 else f"round {state.final_round}"
    return (
        f"Stopped early after round {state.rounds_completed} of {state.num_rounds}: {state.stop_reason}. "
        f"Final model: {final}."
    )
