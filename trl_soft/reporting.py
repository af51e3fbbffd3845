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
    if state.rounds_completed >= state.num_rounds:  # the last round itself was the bad one: nothing was skipped
        return f"The last round ({state.rounds_completed}) was not kept: {state.stop_reason}. Final model: {final}."
    return (
        f"Stopped early after round {state.rounds_completed} of {state.num_rounds}: {state.stop_reason}. "
        f"Final model: {final}."
    )


# Panels of `plot_rounds`, drawn when the run has the metric.
PLOT_PANELS: tuple[tuple[str, str], ...] = (
    ("validation_nll", "validation NLL (lower is better)"),
    ("sample_entropy", "sample entropy (nats)"),
    ("sample_distinct_2", "distinct-2"),
    ("sample_self_bleu", "self-BLEU"),
    ("truthfulqa_mc1", "TruthfulQA MC1"),
    ("truthfulqa_mc2", "TruthfulQA MC2"),
    ("hhh_overall", "HHH"),
    ("train_loss", "train loss"),
)


def plot_rounds(state: SOFTState, path: str) -> None:
    """One panel per available metric over rounds (round 0 = the starting model); the final round is starred."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install 'trl-soft[plot]'.") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ([state.base_metrics] if state.base_metrics else []) + list(state.history)
    panels = [(key, title) for key, title in PLOT_PANELS if any(key in row for row in rows)]
    if not panels:
        raise ValueError("The run has no per-round metrics to plot yet.")
    columns = min(3, len(panels))
    figure, axes = plt.subplots(
        (len(panels) + columns - 1) // columns, columns, figsize=(4.2 * columns, 3.2 * ((len(panels) + 2) // 3)),
        squeeze=False,
    )
    for axis, (key, title) in zip(axes.flat, panels):
        points = [(row["round"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        axis.plot(*zip(*points), marker="o")
        final = [value for round_index, value in points if round_index == state.final_round]
        if final:
            axis.plot(state.final_round, final[0], marker="*", markersize=14, label="final model")
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    if state.stopped_early:
        figure.suptitle(f"stopped after round {state.rounds_completed}; final model: round {state.final_round}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
