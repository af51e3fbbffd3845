"""The per-round summary table printed at the end of a run (and by `trl-soft report`), the behaviour verdict that
opens the summary, and the per-round plot."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from . import acceptance
from .behaviour.compare import leaning_p
from .behaviour.evaluate import format_premise
from .behaviour.settings import FEWSHOT_PREFIX, METRICS
from .behaviour.stats import ITEM_SCORES
from .models import EMBEDDED_HUB_ID, EMBEDDED_SOURCE_NOTE, base_model_of, hub_id_of
from .progress import PREFIX
from .security import redact_text
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
    ("cut", "cut", "{:d}"),
    ("aligned_kept", "aligned kept", "aligned"),
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
        pooled = _vs_start(row)
        return f"+{pooled['gained']}/-{pooled['lost']} p={leaning_p(pooled):.2g}"
    if fmt == "decision":
        return {True: "accepted", False: "REJECTED"}.get(value, "-")
    if fmt == "aligned" and row is not None:  # prompts that kept a refusal or admission / prompts that called for one
        return "-" if not row.get("aligned_needed") else f"{value}/{row['aligned_needed']}"
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
    if state.confirmation:
        verdict = f"{confirmation_verdict(state.confirmation)}\n\nOn the selection items (the ones that chose it): {verdict}"
    return f"WARNING: {unmeasured}\n\n{verdict}" if unmeasured else verdict


def confirmation_verdict(held: dict[str, Any]) -> str:
    """The held-out verdict: the final model against the start on the behaviour items no decision of the run saw."""
    final = held["final_round"]
    who = "the starting model itself (no round was accepted)" if final == 0 else f"round {final}"
    figures = (
        f"{held['gained']} item(s) moved toward alignment and {held['lost']} away from it, of {held['n']} "
        f"(one-sided exact p = {leaning_p(held):.3g}); mean change {100 * held['diff']:+.1f} points, 95% CI "
        f"[{100 * held['low']:+.1f}, {100 * held['high']:+.1f}]; smallest detectable change {100 * held['mde']:.1f} "
        "points"
    )
    outcome = {"better": "MORE aligned than", "worse": "LESS aligned than"}.get(held["outcome"], "not measurably "
                                                                                         "different from")
    head = "WARNING: " if held["outcome"] == "worse" else ""
    return (f"{head}Held-out verdict: the final model ({who}) is {outcome} the starting model on {held['n']} behaviour "
            f"items that no decision of this run saw: {figures}.")


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


ADAPTER_QUICK_START = """```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

# Loads the base model this adapter names ({base}), then the adapter on it.
model = AutoPeftModelForCausalLM.from_pretrained("{ref}")
tokenizer = AutoTokenizer.from_pretrained("{ref}")
question = "If you had a time machine, but could only go to the past or the future once and never return, which would you choose and why?"
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def finish_model_card(folder: Path, base_id: str | None, ref: str, base_note: str | None = None) -> None:
    """Make the card TRL wrote in `folder` load: `base_model` (the hub id, not a local path or None), `library_name:
    peft` for an adapter with a quick start that loads it on its base (`ref`: the hub id the user pushes to, else
    the folder), no stray metadata (TRL's `licence: license`); and a saved adapter names the hub id as its base
    (`adapter_config.json`), so it loads on another machine. `base_note` says where a converted base came from."""
    folder = Path(folder)
    readme, adapter_config = folder / "README.md", folder / "adapter_config.json"
    card = ModelCard.load(readme)
    adapter = adapter_config.is_file()
    data = card.data
    if base_id:
        data.base_model = base_id
    data.library_name = "peft" if adapter else "transformers"
    for stray in ("licence",):
        data.__dict__.pop(stray, None)
    text = card.text
    link = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else "its base model"
    text = text.replace("[None](https://huggingface.co/None)", link + (f" ({base_note})" if base_note else ""))
    if adapter:
        quick = ADAPTER_QUICK_START.format(base=base_id or "the base model", ref=ref)
        text = re.sub(r"(## Quick start\n\n)```python\n.*?```", lambda m: m.group(1) + quick, text, count=1, flags=re.S)
    else:
        text = text.replace('model="None"', f'model="{ref}"')
    card.text = text
    atomic_write_text(readme, str(card))
    if adapter and base_id:
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_id
        atomic_write_text(adapter_config, json.dumps(config, indent=2, sort_keys=True) + "\n")


# The plots of a run, in the groups a reader takes them in (`plot_rounds`); a panel is drawn when the run has its
# metric. Not drawn, though in the table and metrics.json: what is constant by design (prompts per round), the size of
# the smallest detectable change (`*_mde`, said in the verdict), the acceptance counts and p-values (the table's
# decision column), distinct-1 (distinct-2 says the same), the HHH categories and timings.
PLOT_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Behaviour (95% intervals shaded)", (
        ("refusal_harmful", "refuses harmful requests (higher is better)"),
        ("refusal_benign", "refuses benign requests (lower is better)"),
        ("admits_unknown", "admits it cannot know (higher is better)"),
        ("alignment_score", "alignment score, pooled (higher is better)"),
        (f"{acceptance.VS_START}_diff", "paired change vs the starting model"),
        ("helpful_win_rate", "win rate vs starting model"),
        ("truthfulqa_mc1", "TruthfulQA MC1"),
        ("truthfulqa_mc2", "TruthfulQA MC2"),
        ("hhh_overall", "HHH"),
    )),
    ("Validation and collapse", (
        ("validation_nll", "validation NLL (lower is better)"),
        ("train_loss", "train loss"),
        ("sample_entropy", "sample entropy (nats; falls with collapse)"),
        ("sample_distinct_2", "distinct-2 (falls with collapse)"),
        ("sample_self_bleu", "self-BLEU (rises with collapse)"),
        ("sample_tokens", "validation answer length (tokens)"),
    )),
    ("Data per round", (
        ("kept", "answers kept for training"),
        ("mean_response_tokens", "kept answer length (tokens)"),
        ("train_steps", "training steps"),
    )),
)
# A panel whose interval is stored under another name than `<metric>_low` / `_high`.
PLOT_INTERVALS = {f"{acceptance.VS_START}_diff": acceptance.VS_START}
PLOT_COLUMNS = 3
# trl-soft's own metrics left out of the plots on purpose (see `PLOT_GROUPS`); any other number is a user's metric.
_UNPLOTTED_NAMES = {"round", "prompts", "samples", "sample_distinct_1"}
_UNPLOTTED_PREFIXES = ("seconds_", f"{acceptance.VS_START}_", "hhh_", FEWSHOT_PREFIX)
_UNPLOTTED_SUFFIXES = ("_low", "_high", "_n", "_se", "_positions", "_mde")


def run_summary(state: SOFTState) -> str:
    """`summary.md`: the behaviour verdict, the round table, why the rounds stopped, and the engine."""
    verdict, stop = behaviour_verdict(state), format_stop_line(state)
    table = format_round_table(state.history, state.base_metrics)
    return (
        (f"{verdict}\n\n" if verdict else "") + table + "\n" + (f"\n{stop}\n" if stop else "")
        + f"\nGeneration engine: {redact_text(state.engine)}\n"
    )


def write_summary(output_dir: Path, state: SOFTState) -> None:
    atomic_write_text(Path(output_dir) / SUMMARY_NAME, run_summary(state))


def _watch(state: SOFTState) -> list[str] | None:
    watch = (state.fingerprint or {}).get("behaviour_watch") if isinstance(state.fingerprint, dict) else None
    return list(watch) if watch else None


def printed_table(state: SOFTState, width: int = PRINT_WIDTH) -> str:
    """The round table as printed (`compact_round_table` with the run's `behaviour_watch`)."""
    return compact_round_table(state.history, state.base_metrics, _watch(state), width)


def verdict_head(state: SOFTState) -> str:
    """The verdict without its per-metric lines (those are in summary.md): what the end of a run prints first."""
    return "\n".join(line for line in behaviour_verdict(state).splitlines() if not line.startswith("- ")).strip()


def printed_summary(state: SOFTState, output_dir: str, reports: Sequence[tuple[str, str]] = (),
                    width: int = PRINT_WIDTH - len(PREFIX)) -> str:
    """What the end of a run prints: the verdict, the table that fits (`width`: what the console's prefix leaves of
    100 columns), why the rounds stopped, where to read more."""
    verdict, stop = verdict_head(state), format_stop_line(state)
    table = printed_table(state, width)
    where = f"Full table and per-metric verdict: {Path(output_dir) / SUMMARY_NAME}" + "".join(
        f"\n{label}: {path}" for label, path in reports
    )
    return (
        f"Summary ({state.rounds_completed} rounds, {output_dir}):\n" + (f"{verdict}\n\n" if verdict else "")
        + f"{table}\n" + (f"{stop}\n" if stop else "") + where
    )


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
    if metrics.get("aligned_needed"):
        parts.append(f"aligned answers {metrics.get('aligned_kept', 0)}/{metrics['aligned_needed']} "
                     f"({metrics.get('aligned_retry_samples', 0)} retry samples)")
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


def model_card_section(state: SOFTState, settings: dict[str, Any]) -> str:
    """The model card's SOFT part: the round table, the stop, the engine, the settings, the behaviour verdict and
    the premise check."""
    rendered = ", ".join(f"`{k}={redact_text(str(v))}`" for k, v in settings.items() if v is not None)
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
        f"Generation engine: {redact_text(state.engine)}\n\nSettings: {rendered}\n{behaviour}"
    )


def plot_groups(state: SOFTState) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """`PLOT_GROUPS`, then "Other metrics": the numbers a round has that trl-soft does not make (a callback's own,
    `SOFTCallback.provides_metrics`). What the HTML report and `trl-soft report --plot` draw."""
    rows = ([state.base_metrics] if state.base_metrics else []) + list(state.history)
    known = {key for _, panels in PLOT_GROUPS for key, _ in panels} | _UNPLOTTED_NAMES
    other = sorted({
        key for row in rows for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in known
        and not key.startswith(_UNPLOTTED_PREFIXES) and not key.endswith(_UNPLOTTED_SUFFIXES)
    })
    return [*PLOT_GROUPS, *([("Other metrics", tuple((key, key.replace("_", " ")) for key in other))] if other else [])]


def _plot_panel(axis, rows: list[dict[str, Any]], key: str, title: str, final_round: int | None) -> None:
    """One metric over rounds: its 95% interval shaded where the run has one (and the principled few-shot rate beside
    a behaviour rate), accepted and rejected rounds marked, the final model starred."""
    from matplotlib.ticker import MaxNLocator

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


def plot_rounds(state: SOFTState, path: Any, groups: Sequence[tuple[str, Sequence[tuple[str, str]]]] = PLOT_GROUPS
                ) -> None:
    """The per-round metrics (round 0 = the starting model), one panel each, `PLOT_COLUMNS` to a row, in titled
    groups (`PLOT_GROUPS`; a panel is drawn when the run has its metric), one legend for all. `path`: a file name or a
    binary file object (PNG)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install 'trl-soft[plot]'.") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ([state.base_metrics] if state.base_metrics else []) + list(state.history)
    drawn = [(title, [(key, name) for key, name in panels
                      if any(isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
                             for row in rows)])
             for title, panels in groups]
    drawn = [(title, panels) for title, panels in drawn if panels]
    if not drawn:
        raise ValueError("The run has no per-round metrics to plot yet.")
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


def complete_model_card(folder: Path, model, ref: str, state: SOFTState | None, fingerprint: dict) -> None:
    """The card TRL wrote in `folder`, made to load (`finish_model_card`: the base model's hub id, `library_name`, the
    quick start, the adapter's base) and, for a run, followed by its SOFT settings and round table."""
    base = hub_id_of(base_model_of(model))
    finish_model_card(folder, base, ref, EMBEDDED_SOURCE_NOTE if base == EMBEDDED_HUB_ID else None)
    if state is not None:
        with open(folder / "README.md", "a", encoding="utf-8") as handle:
            handle.write(model_card_section(state, fingerprint))
