"""The figure of `plots.plot_rounds`, drawn with matplotlib: imported only by it, on first use (matplotlib is the
optional `plot` extra)."""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from .. import acceptance
from ..behaviour.settings import FEWSHOT_PREFIX, METRICS
from ..state import SOFTState

# A panel whose interval is stored under another name than `<metric>_low` / `_high`.
PLOT_INTERVALS = {f"{acceptance.VS_START}_diff": acceptance.VS_START}
PLOT_COLUMNS = 3


def _plot_panel(axis, rows: list[dict[str, Any]], key: str, title: str, final_round: int | None) -> None:
    """One metric over rounds: its 95% interval shaded where the run has one (and the principled few-shot rate beside
    a behaviour rate), accepted and rejected rounds marked, the final model starred."""
    points = [(row["round"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
    axis.plot(*zip(*points), marker="o", color="C0", label="zero-shot" if key in METRICS else None)
    for prefix, style in (("", "C0"), (FEWSHOT_PREFIX, "C2")):
        name = prefix + PLOT_INTERVALS.get(key, key)
        spans = [(row["round"], row.get(prefix + key), row[f"{name}_low"], row[f"{name}_high"]) for row in rows
                 if f"{name}_low" in row and isinstance(row.get(prefix + key), (int, float))]
        if not spans:
            continue
        xs, ys, lows, highs = zip(*spans)
        if prefix:
            axis.plot(xs, ys, marker="s", color=style, label="principled (few-shot)")
        axis.fill_between(xs, lows, highs, color=style, alpha=0.15)
    decided = {row["round"]: row.get("accepted") for row in rows}
    for verdict, marker, colour, label in ((True, "o", "tab:green", "accepted"), (False, "X", "tab:red", "rejected")):
        marked = [(r, v) for r, v in points if decided.get(r) is verdict]
        if marked:
            axis.scatter(*zip(*marked), marker=marker, s=90, facecolors="none" if verdict else colour,
                         edgecolors=colour, zorder=3, label=label)
    final = [value for round_index, value in points if round_index == final_round]
    if final:
        axis.plot(final_round, final[0], marker="*", markersize=14, color="C1", linestyle="none", label="final model")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("round")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.ticklabel_format(axis="y", useOffset=False)  # 10.79 on the axis, not +1.0789e1 above it
    axis.grid(alpha=0.3)


def draw_rounds(state: SOFTState, rows: list[dict[str, Any]], drawn: list[tuple[str, list[tuple[str, str]]]],
                path: Any) -> None:
    """`drawn`'s panels of `rows` in titled groups, `PLOT_COLUMNS` to a row, one legend for all, saved as PNG."""
    matplotlib.use("Agg")
    heights = [-(-len(panels) // PLOT_COLUMNS) for _, panels in drawn]
    figure = plt.figure(figsize=(4.2 * PLOT_COLUMNS, 3.1 * sum(heights) + 0.45 * len(drawn) + 0.6),
                        layout="constrained")
    parts = figure.subfigures(len(drawn), 1, height_ratios=[h + 0.3 for h in heights], squeeze=False)
    legend: dict[str, Any] = {}
    for part, (title, panels), height in zip(parts.flat, drawn, heights):
        part.suptitle(title, x=0.01, ha="left", fontweight="bold")
        axes = part.subplots(height, PLOT_COLUMNS, squeeze=False)
        for axis, (key, name) in zip(axes.flat, panels):
            _plot_panel(axis, rows, key, name, state.final_round)
            for handle, label in zip(*axis.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        for axis in list(axes.flat)[len(panels):]:
            axis.set_visible(False)
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=9)
    if state.stopped_early:
        figure.suptitle(f"stopped after round {state.rounds_completed}; final model: round {state.final_round}")
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
