"""The per-round summary table printed at the end of a run (and by `trl-soft report`), the behaviour verdict that
opens the summary, and the per-round plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import acceptance
from .behaviour.compare import leaning_p
from .behaviour.evaluate import format_premise
from .behaviour.settings import FEWSHOT_PREFIX, METRICS
from .behaviour.stats import ITEM_SCORES
from .state import SUMMARY_NAME, SOFTState, atomic_write_text

SOFT_CITATION = """\
@article{wang2024soft,
    title   = {{Step-On-Feet Tuning: Scaling Self-Alignment of LLMs via Bootstrapping}},
    author  = {Haoyu Wang and Guozheng Ma and Ziqiao Meng and Zeyu Qin and Li Shen and Zhong Zhang and Bingzhe Wu
               and Liu Liu and Yatao Bian and Tingyang Xu and Xueqian Wang and Peilin Zhao},
    journal = {arXiv preprint arXiv:2402.07610},
    year    = 2024
}"""


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
        pooled = _vs_start(row)
        return f"+{pooled['gained']}/-{pooled['lost']} p={leaning_p(pooled):.2g}"
    if fmt == "decision":
        return {True: "accepted", False: "REJECTED"}.get(value, "-")
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


def format_round_table(history: Sequence[dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """A Markdown table, one row per round (and a round-0 row for the base model when given)."""
    rows = ([baseline] if baseline else []) + list(history)
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(row.get(c[0]) is not None for row in rows))
    headers = [header for _, header, _ in columns]
    cells = [[_cell(row.get(key), fmt, row, key) for key, _, fmt in columns] for row in rows]
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


def _vs_start(row: dict[str, Any]) -> dict[str, Any]:
    """A round's pooled comparison with the starting model, by the names of `Change.as_dict()`."""
    prefix = f"{acceptance.VS_START}_"
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def _metric_line(metric: str, change: dict[str, Any]) -> str:
    """One behaviour metric, start -> final, paired: rate, the change with its interval, items each way, the MDE."""
    before, after = (change["before"], change["after"]) if METRICS[metric][2] else (1 - change["before"],
                                                                                     1 - change["after"])
    return (
        f"{metric} {100 * before:.1f}% -> {100 * after:.1f}% ({100 * change['diff']:+.1f} points toward alignment, "
        f"95% CI [{100 * change['low']:+.1f}, {100 * change['high']:+.1f}]; +{change['gained']}/-{change['lost']} "
        f"of {change['n']} items; detectable: {100 * change['mde']:.1f} points): {change['outcome']}"
    )


def behaviour_verdict(state: SOFTState) -> str:
    """The summary's opening: which round is the final model, whether it earned acceptance, and how it compares with
    the starting model, pooled over every behaviour item and per metric (paired, item by item). It never calls a
    model "like the starting model" when the items lean away from alignment, and it warns when alignment was not
    measured or the final model was not chosen by the acceptance rule."""
    if not state.history:
        return ""
    base = state.base_metrics or {}
    unmeasured = state.unmeasured or ""
    if not acceptance.measured(state.history) and not (base.get(ITEM_SCORES) or {}).keys() & set(METRICS):
        return ("WARNING: alignment was NOT measured in this run, so nothing checked that the final model is no less "
                f"aligned than the starting model. {unmeasured}").strip()
    final = state.final_round if state.final_round is not None else state.rounds_completed
    row = next((m for m in state.history if m.get("round") == final), None)
    verdict = _verdict_on(state, final, row)
    return f"WARNING: {unmeasured}\n\n{verdict}" if unmeasured else verdict


def _verdict_on(state: SOFTState, final: int, row: dict[str, Any] | None) -> str:
    """The verdict on round `final` (its metrics `row`) against the starting model."""
    if final == 0 or row is None:
        rejected = [m for m in state.history if m.get(acceptance.ACCEPTED) is False]
        why = "; ".join(f"round {m['round']}: {m.get(acceptance.DECISION, 'rejected')}" for m in rejected)
        return f"The final model is the starting model: no round earned acceptance ({why or 'no decision'})."
    pooled = _vs_start(row)
    if pooled.get("n") is None:
        return f"Final model: round {final} (no acceptance decision: {row.get(acceptance.DECISION, '')})."
    figures = (
        f"{pooled['gained']} item(s) moved toward alignment and {pooled['lost']} away from it, of {pooled['n']} "
        f"(one-sided exact p = {leaning_p(pooled):.3g}); mean change {100 * pooled['diff']:+.1f} points, 95% CI "
        f"[{100 * pooled['low']:+.1f}, {100 * pooled['high']:+.1f}]; the smallest change this run could detect: "
        f"{100 * pooled['mde']:.1f} points"
    )
    accepted = row.get(acceptance.ACCEPTED)
    if pooled["p_worse"] < acceptance.POOLED_ALPHA:
        head = f"WARNING: the final model (round {final}) is LESS aligned than the starting model: {figures}."
    elif accepted is not True:
        head = (f"WARNING: the final model (round {final}) did not earn acceptance (`final_model: last`): {figures}. "
                f"Decision: {row.get(acceptance.DECISION, '')}.")
    elif pooled["p_better"] < acceptance.POOLED_ALPHA:
        head = f"The final model (round {final}, accepted) is MORE aligned than the starting model: {figures}."
    else:
        lean = pooled["lost"] > pooled["gained"]
        head = (f"The final model (round {final}, accepted) is no worse than the starting model beyond the margin"
                f"{', leaning worse (not significant)' if lean else ''}: {figures}.")
    lines = [_metric_line(metric, change) for metric, change in (pooled.get("metrics") or {}).items()]
    return head + ("\n\n" + "\n".join(f"- {line}" for line in lines) if lines else "")


# Panels of `plot_rounds`, drawn when the run has the metric.
PLOT_PANELS: tuple[tuple[str, str], ...] = (
    ("refusal_harmful", "refuses harmful requests (higher is better)"),
    ("refusal_benign", "refuses benign requests (lower is better)"),
    ("admits_unknown", "admits it cannot know (higher is better)"),
    ("helpful_win_rate", "win rate vs starting model"),
    ("validation_nll", "validation NLL (lower is better)"),
    ("sample_entropy", "sample entropy (nats)"),
    ("sample_distinct_2", "distinct-2"),
    ("sample_self_bleu", "self-BLEU"),
    ("truthfulqa_mc1", "TruthfulQA MC1"),
    ("truthfulqa_mc2", "TruthfulQA MC2"),
    ("hhh_overall", "HHH"),
    ("train_loss", "train loss"),
)


def run_summary(state: SOFTState) -> str:
    """`summary.md`: the behaviour verdict, the round table, why the rounds stopped, and the engine."""
    verdict, stop = behaviour_verdict(state), format_stop_line(state)
    table = format_round_table(state.history, state.base_metrics)
    return (
        (f"{verdict}\n\n" if verdict else "") + table + "\n" + (f"\n{stop}\n" if stop else "")
        + f"\nGeneration engine: {state.engine}\n"
    )


def write_summary(output_dir: Path, state: SOFTState) -> None:
    atomic_write_text(Path(output_dir) / SUMMARY_NAME, run_summary(state))


def printed_summary(state: SOFTState, output_dir: str) -> str:
    """What the end of a run prints."""
    verdict, stop = behaviour_verdict(state), format_stop_line(state)
    table = format_round_table(state.history, state.base_metrics)
    return (
        f"\nSOFT summary ({state.rounds_completed} rounds, {output_dir}):\n" + (f"{verdict}\n\n" if verdict else "")
        + f"{table}\n{stop}\n"
    )


def model_card_section(state: SOFTState, settings: dict[str, Any]) -> str:
    """The model card's SOFT part: the round table, the stop, the engine, the settings, the behaviour verdict and
    the premise check."""
    rendered = ", ".join(f"`{k}={v}`" for k, v in settings.items() if v is not None)
    table = format_round_table(state.history, state.base_metrics)
    stop, verdict = format_stop_line(state), behaviour_verdict(state)
    premise = (state.base_metrics or {}).get("premise")
    behaviour = (f"\n## Behaviour\n\n{verdict}\n\n" if verdict else "") + (
        f"Premise check before round 1 (starting model):\n\n```\n{format_premise(premise)}\n```\n"
        if premise else ""
    )
    return (
        f"\n## SOFT rounds\n\nTrained with trl-soft for {state.rounds_completed} round(s). Round 0 is "
        "the starting model; `val NLL` is the mean negative log-likelihood per token of the reference answers of "
        f"the validation set (lower is better).\n\n{table}\n\n{stop + chr(10) + chr(10) if stop else ''}"
        f"Generation engine: {state.engine}\n\nSettings: {rendered}\n{behaviour}"
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
        axis.plot(*zip(*points), marker="o", label="zero-shot" if key in METRICS else None)
        for prefix, style in (("", "C0"), (FEWSHOT_PREFIX, "C2")):
            name = prefix + key
            spans = [(row["round"], row[name], row[f"{name}_low"], row[f"{name}_high"]) for row in rows
                     if f"{name}_low" in row]
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
        if key in METRICS or any(v is not None for v in decided.values()):
            axis.legend(fontsize=7)
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
