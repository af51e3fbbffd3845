"""The round table: every column in Markdown (summary.md, the model card, `trl-soft report --all`), the printed
one within 100 columns (the watched behaviour rates with their intervals, the decision), and a round's one result
line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import acceptance
from ..behaviour.compare import leaning_p
from ..state import SOFTState

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
    ("cut", "cut", "{:d}"),
    ("aligned_kept", "aligned kept", "aligned"),
    ("corrections_kept", "premise kept", "corrections"),
    ("aligned_retry_samples", "retries", "{:d}"),
    ("sample_entropy", "entropy", "{:.3f}"),
    ("sample_distinct_2", "distinct-2", "{:.3f}"),
    ("sample_self_bleu", "self-BLEU", "{:.3f}"),
    ("sample_tokens", "sample tok", "{:.1f}"),
    ("truthfulqa_mc1", "TQA MC1", "{:.4f}"),
    ("truthfulqa_mc2", "TQA MC2", "{:.4f}"),
    ("hhh_overall", "HHH", "{:.4f}"),
    ("hhh_acc_norm_overall", "HHH norm", "{:.4f}"),
    ("seconds_benchmarks", "bench s", "{:.0f}"),
    # Behaviour rates in percent with their 95% interval; the few-shot form is the principle-driven prompt.
    ("refusal_harmful", "refuse harmful %", "rate"),
    ("fewshot_refusal_harmful", "few-shot", "rate"),
    ("refusal_benign", "refuse benign %", "rate"),
    ("fewshot_refusal_benign", "few-shot", "rate"),
    ("admits_unknown", "admits unknown %", "rate"),
    ("fewshot_admits_unknown", "few-shot", "rate"),
    ("helpful_win_rate", "win vs start %", "rate"),
    ("alignment_score", "align score", "rate"),
    # The pooled paired comparison with the starting model (+gained/-lost items, one-sided exact p), the smallest
    # change it could detect (points), each metric's own, and the acceptance decision.
    ("vs_start_n", "vs start", "vs_start"),
    ("vs_start_mde", "MDE", "points"),
    ("refusal_harmful_mde", "MDE harmful", "points"),
    ("refusal_benign_mde", "MDE benign", "points"),
    ("admits_unknown_mde", "MDE unknown", "points"),
    ("accepted", "decision", "decision"),
    ("seconds_behaviour", "behav s", "{:.0f}"),
)


def _cell(value: Any, fmt: str, row: dict[str, Any] | None = None, key: str = "") -> str:
    if fmt == "vs_start" and row is not None and row.get("vs_start_n") is not None:
        pooled = vs_start(row)
        return f"+{pooled['gained']}/-{pooled['lost']} p={leaning_p(pooled):.2g}"
    if fmt == "decision":
        return {True: "accepted", False: "REJECTED"}.get(value, "-")
    if fmt == "aligned" and row is not None:  # prompts that kept a refusal or admission / prompts that called for one
        return "-" if not row.get("aligned_needed") else f"{value}/{row['aligned_needed']}"
    if fmt == "corrections" and row is not None:  # prompts that kept a premise correction / prompts that called for one
        return "-" if not row.get("corrections_needed") else f"{value}/{row['corrections_needed']}"
    if fmt == "points":
        return "-" if value is None else f"{100 * value:.1f}"
    if value is None:
        return "-"
    if fmt == "rate" and row is not None:
        low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
        interval = f" [{100 * low:.0f}-{100 * high:.0f}]" if low is not None and high is not None else ""
        return f"{100 * value:.0f}{interval}"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)
# The printed table: what a person decides with, within `PRINT_WIDTH` columns (summary.md, metrics.json and
# `trl-soft report --all` keep every column). The behaviour rates are those the acceptance rule watches.
PRINT_WIDTH = 100
COMPACT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("round", "round", "{:d}"),
    ("kept", "kept", "{:d}"),
    ("train_loss", "loss", "{:.3f}"),
    ("validation_nll", "val NLL", "{:.3f}"),
)
COMPACT_RATES: dict[str, str] = {
    "refusal_harmful": "refuse harm %", "refusal_benign": "refuse benign %", "admits_unknown": "admit unknown %",
}
COMPACT_DECISION = ("accepted", "decision", "decision")


def table_cells(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> tuple[list[str], list[list[str]]]:
    """The headers and the formatted cells of a round table (the Markdown and the HTML tables share them)."""
    return [header for _, header, _ in columns], [[_cell(row.get(k), fmt, row, k) for k, _, fmt in columns] for row in rows]


def all_columns(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """Every column of the full table the rows have (`COLUMNS`, then the optional ones some row has)."""
    return COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(row.get(c[0]) is not None for row in rows))


def _markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    headers, cells = table_cells(rows, columns)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def format_round_table(history: Sequence[dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """A Markdown table, one row per round (and a round-0 row for the base model when given): every column."""
    rows = ([baseline] if baseline else []) + list(history)
    return _markdown(rows, all_columns(rows))


def watched_rates(rows: Sequence[dict[str, Any]], watch: Sequence[str] | None = None) -> list[str]:
    """The behaviour rates the run has, limited to `behaviour_watch` when it names some."""
    return [m for m in COMPACT_RATES if (watch is None or m in watch) and any(row.get(m) is not None for row in rows)]


def compact_round_table(
    history: Sequence[dict[str, Any]], baseline: dict[str, Any] | None = None, watch: Sequence[str] | None = None,
    width: int = PRINT_WIDTH,
) -> str:
    """The printed table: round, kept, train loss, validation NLL, the watched behaviour rates with their 95%
    intervals, the decision; at most `width` characters a line (rates are dropped from the right until it fits)."""
    rows = ([baseline] if baseline else []) + list(history)
    present = [c for c in COMPACT_COLUMNS if c[0] == "round" or any(row.get(c[0]) is not None for row in rows)]
    rates = [(m, COMPACT_RATES[m], "rate") for m in watched_rates(rows, watch)]
    decision = [COMPACT_DECISION] if any(row.get("accepted") is not None for row in rows) else []
    while True:
        table = _markdown(rows, [*present, *rates, *decision])
        if max(len(line) for line in table.splitlines()) <= width or not rates:
            return table
        rates.pop()


def vs_start(row: dict[str, Any]) -> dict[str, Any]:
    """A round's pooled comparison with the starting model, by the names of `Change.as_dict()`."""
    prefix = f"{acceptance.VS_START}_"
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def _watch(state: SOFTState) -> list[str] | None:
    watch = (state.fingerprint or {}).get("behaviour_watch") if isinstance(state.fingerprint, dict) else None
    return list(watch) if watch else None


def printed_table(state: SOFTState, width: int = PRINT_WIDTH) -> str:
    """The round table as printed (`compact_round_table` with the run's `behaviour_watch`)."""
    return compact_round_table(state.history, state.base_metrics, _watch(state), width)


def _rate_change(row: dict[str, Any], base: dict[str, Any], metric: str) -> str:
    start = base.get(metric)
    start_text = f" (start {100 * start:.0f}%)" if isinstance(start, (int, float)) else ""
    return f"{COMPACT_RATES[metric].removesuffix(' %')} {100 * row[metric]:.0f}%{start_text}"


def round_line(metrics: dict[str, Any], base: dict[str, Any] | None, stop_reason: str | None = None,
               watch: Sequence[str] | None = None) -> str:
    """A round's one result line: kept/filtered, train loss, validation NLL, the behaviour rates against the start,
    the decision (and the stop, when the run stops here)."""
    base = base or {}
    filtered = metrics.get("filtered") or {}
    drops = ", ".join(f"{reason} {count}" for reason, count in filtered.items())
    parts = [f"kept {metrics.get('kept', 0)}/{metrics.get('samples', metrics.get('prompts', 0))}"
             + (f" (filtered: {drops})" if drops else "")]
    if metrics.get("aligned_needed") or metrics.get("corrections_needed"):
        found = [f"{label} {metrics.get(kept, 0)}/{metrics[needed]}" for label, kept, needed in (
            ("aligned answers", "aligned_kept", "aligned_needed"),
            ("premise corrections", "corrections_kept", "corrections_needed")) if metrics.get(needed)]
        parts.append(f"{', '.join(found)} ({metrics.get('aligned_retry_samples', 0)} retry samples)")
    if isinstance(metrics.get("mean_response_tokens"), (int, float)) and metrics.get("kept"):
        parts.append(f"{metrics['mean_response_tokens']:.0f} tokens an answer")
    if isinstance(metrics.get("train_loss"), (int, float)):
        parts.append(f"train loss {metrics['train_loss']:.3f}")
    if isinstance(metrics.get("validation_nll"), (int, float)):
        start = base.get("validation_nll")
        parts.append(f"val NLL {metrics['validation_nll']:.3f}"
                     + (f" (start {start:.3f})" if isinstance(start, (int, float)) else ""))
    parts += [_rate_change(metrics, base, m) for m in watched_rates([metrics], watch)]
    accepted = metrics.get(acceptance.ACCEPTED)
    verdict = {True: "ACCEPTED", False: "REJECTED"}.get(accepted, "no decision")
    reason = metrics.get(acceptance.DECISION) or ""
    line = "; ".join(parts) + f" | {verdict}" + (f": {reason}" if reason else "") + "."
    return line + (f" Stopping: {stop_reason}." if stop_reason else "")
