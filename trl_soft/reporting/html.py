"""`report.html`: one self-contained page a person can read a run from (`trl-soft report RUN --html`, and written at
the end of every run when matplotlib is installed).

It holds the verdict, the full round table, the per-round plots in groups (behaviour, validation and collapse, data
per round; `plots.PLOT_GROUPS`) with their 95% intervals, the filter
counts, and the behaviour answers side by side (the starting model, then each round), the items whose verdict changed
first. Images are inlined as base64 PNG and the style sheet is inline: no script, nothing fetched, so the page opens
from a copied folder or an e-mail. Every model answer and prompt is HTML-escaped (they are untrusted text).
"""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..state import PLOT_NAME, REPORT_NAME, SUMMARY_NAME, SOFTState, atomic_write_text, round_paths
from .plots import plot_groups, plot_rounds
from .summary import write_summary
from .table import all_columns, table_cells
from .verdict import behaviour_verdict, final_model_name, format_stop_line

logger = logging.getLogger(__name__)

SAMPLES_NAME = "behaviour.jsonl"  # per round folder, written by `behaviour.run` (one line per answer and metric)
UNCHANGED_SHOWN = 5  # per behaviour metric: the items whose verdict never changed are many and alike; a few suffice
ANSWER_CHARS = 600  # an answer longer than this is cut in the page (the jsonl files keep it whole)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #1a1a1a; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.verdict { background: #f4f6f8; border-left: 4px solid #4a7; padding: .6em 1em; white-space: pre-wrap; }
.verdict.warning { border-left-color: #c33; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; vertical-align: top; }
th { background: #eef; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } img { max-width: 100%; }
td.answer { max-width: 22em; white-space: pre-wrap; word-break: break-word; }
.good { background: #e7f6ea; } .bad { background: #fbe9e9; } .note { color: #555; font-size: .9em; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cls = ' class="num"' if numeric else ""
    body = "".join("<tr>" + "".join(f"<td{cls}>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def plot_png(state: SOFTState) -> bytes | None:
    """The per-round metrics as one PNG, in their groups (`reporting.plot_rounds` over `plot_groups`); None without
    metrics."""
    buffer = io.BytesIO()
    try:
        plot_rounds(state, buffer, plot_groups(state))
    except ValueError:  # no per-round metric yet
        return None
    return buffer.getvalue()


def _filter_table(state: SOFTState) -> str:
    rows = [row for row in state.history if isinstance(row.get("filtered"), dict)]
    reasons = list(dict.fromkeys(reason for row in rows for reason in row["filtered"]))
    if not rows:
        return '<p class="note">No round has filter counts yet.</p>'
    headers = ["round", "answers", "kept", *reasons]
    body = [[str(row["round"]), str(row.get("samples", row.get("prompts", ""))), str(row.get("kept", "")),
             *(str(row["filtered"].get(reason, 0)) for reason in reasons)] for row in rows]
    return _table(headers, body)


def read_samples(folder: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """A round's zero-shot behaviour answers by (set, metric, item id); {} when the round has none."""
    path = folder / SAMPLES_NAME
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("style", "zero_shot") == "zero_shot":
            out[(row.get("set", ""), row.get("metric", ""), str(row.get("id", "")))] = row
    return out


def _score(row: dict[str, Any] | None) -> float | None:
    value = (row or {}).get("score")
    return float(value) if isinstance(value, (int, float)) else None


def _answer_cell(row: dict[str, Any] | None, start: float | None) -> str:
    if row is None:
        return '<td class="answer note">(not answered)</td>'
    score = _score(row)
    cls = "good" if start is not None and score is not None and score > start else (
        "bad" if start is not None and score is not None and score < start else "")
    answer = str(row.get("answer", ""))
    shown = answer if len(answer) <= ANSWER_CHARS else answer[:ANSWER_CHARS] + " [...]"
    label = "" if score is None else f"<b>score {score:g}</b>\n"
    return f'<td class="answer {cls}">{label}{_e(shown)}</td>'


def _samples_section(output_dir: Path, state: SOFTState) -> str:
    """Per behaviour metric, the items side by side: prompt, the starting model's answer, each round's. Items whose
    score changed in some round come first (all of them), then a few unchanged ones."""
    rounds = [0, *(row["round"] for row in state.history)]
    answers = {r: read_samples(round_paths(output_dir, r).root) for r in rounds}
    keys = list(answers[0]) or list(dict.fromkeys(k for r in rounds for k in answers[r]))
    if not keys:
        return '<p class="note">No behaviour answers were saved in this run (behaviour evaluation off).</p>'
    parts = []
    for metric in dict.fromkeys((k[0], k[1]) for k in keys):
        items = [k for k in keys if (k[0], k[1]) == metric]
        changed = [k for k in items if len({_score(answers[r].get(k)) for r in rounds if k in answers[r]}) > 1]
        unchanged = [k for k in items if k not in changed][:UNCHANGED_SHOWN]
        head = "".join(f"<th>{'start' if r == 0 else _e(f'round {r}')}</th>" for r in rounds)
        body = []
        for key in changed + unchanged:
            first = answers[0].get(key) or next(answers[r][key] for r in rounds if key in answers[r])
            start = _score(answers[0].get(key))
            cells = "".join(_answer_cell(answers[r].get(key), start if r else None) for r in rounds)
            body.append(f'<tr><td class="answer">{_e(first.get("prompt", ""))}</td>{cells}</tr>')
        set_name, metric_name = metric
        parts.append(
            f"<h3>{_e(set_name)}: {_e(metric_name)}</h3><p class=\"note\">{len(changed)} of {len(items)} item(s) "
            f"changed verdict in some round (all shown, green: better than the start, red: worse); "
            f"{len(unchanged)} unchanged shown. Every answer: <code>round_*/{SAMPLES_NAME}</code>.</p>"
            f'<div class="scroll"><table><tr><th>prompt</th>{head}</tr>{"".join(body)}</table></div>'
        )
    return "".join(parts)


def render_report(output_dir: Path, state: SOFTState, png: bytes | None = None) -> str:
    """The page (a string); `png`: the plot (`plot_png`), omitted when None."""
    output_dir = Path(output_dir)
    verdict, stop = behaviour_verdict(state), format_stop_line(state)
    rows = ([state.base_metrics] if state.base_metrics else []) + list(state.history)
    headers, cells = table_cells(rows, all_columns(rows))
    warning = " warning" if verdict.startswith("WARNING") else ""
    plot = (f'<img alt="per-round metrics with 95% intervals" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">' if png else
            '<p class="note">No plot: matplotlib is not installed (pip install \'trl-soft[plot]\').</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>SOFT run {_e(output_dir.name)}</title><style>{STYLE}</style></head>
<body>
<h1>SOFT run <code>{_e(output_dir.name)}</code></h1>
<p class="note">{_e(state.rounds_completed)} of {_e(state.num_rounds)} round(s); final model: {
        _e(final_model_name(state))}; generation engine: {_e(state.engine or '-')}. Round 0 is the starting model.</p>
<h2>Verdict</h2><div class="verdict{warning}">{_e(verdict or 'No round has finished yet.')}</div>
{f'<p>{_e(stop)}</p>' if stop else ''}
<h2>Rounds</h2>{_table(headers, cells)}
<p class="note">The same table is in <code>{SUMMARY_NAME}</code>; every figure of a round is in
<code>round_*/metrics.json</code>.</p>
<h2>Metrics per round</h2>{plot}
<h2>Filtered answers</h2>{_filter_table(state)}
<h2>Behaviour answers, start vs each round</h2>{_samples_section(output_dir, state)}
</body></html>
"""


def write_html(output_dir: Path, state: SOFTState, png: bytes | None = None) -> Path:
    path = Path(output_dir) / REPORT_NAME
    atomic_write_text(path, render_report(output_dir, state, png))
    return path


def write_reports(output_dir: Path, state: SOFTState) -> list[tuple[str, str]]:
    """The end of a run: `summary.md` always; with matplotlib, `rounds.png` and `report.html` too. Returns what was
    written beside the summary, as (label, path) for the closing lines."""
    output_dir = Path(output_dir)
    write_summary(output_dir, state)
    if importlib.util.find_spec("matplotlib") is None:  # drawn on first use (`plots.plot_rounds`)
        return [("Plots and HTML report", "pip install 'trl-soft[plot]', then trl-soft report "
                                          f"{output_dir} --html")]
    written = []
    try:
        png = plot_png(state)
    except Exception as err:  # noqa: BLE001 - the rounds are done and saved: a plot must not fail the run
        logger.warning(f"could not draw the plots ({type(err).__name__}: {err}); the report has none.")
        png = None
    if png is not None:
        partial = output_dir / f".{PLOT_NAME}.partial"  # renamed into place: a kill never leaves half an image
        partial.write_bytes(png)
        partial.replace(output_dir / PLOT_NAME)
        written.append(("Plots", str(output_dir / PLOT_NAME)))
    written.insert(0, ("HTML report", str(write_html(output_dir, state, png))))
    return written
