"""The per-round plots: which panels, in which groups (`PLOT_GROUPS`, then a user's own metrics under "Other metrics"),
and `plot_rounds`, which draws them with matplotlib (`drawing.py`, imported on first use: the `plot` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import acceptance
from ..behaviour.settings import FEWSHOT_PREFIX
from ..state import SOFTState

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
# trl-soft's own metrics left out of the plots on purpose (see `PLOT_GROUPS`); any other number is a user's metric.
_UNPLOTTED_NAMES = {"round", "prompts", "samples", "sample_distinct_1"}
_UNPLOTTED_PREFIXES = ("seconds_", f"{acceptance.VS_START}_", "hhh_", FEWSHOT_PREFIX)
_UNPLOTTED_SUFFIXES = ("_low", "_high", "_n", "_se", "_positions", "_mde")


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


def plot_rounds(state: SOFTState, path: Any, groups: Sequence[tuple[str, Sequence[tuple[str, str]]]] = PLOT_GROUPS
                ) -> None:
    """The per-round metrics (round 0 = the starting model), one panel each, `drawing.PLOT_COLUMNS` to a row, in titled
    groups (`PLOT_GROUPS`; a panel is drawn when the run has its metric), one legend for all. `path`: a file name or a
    binary file object (PNG)."""
    try:
        from . import drawing  # matplotlib: the optional `plot` extra, imported on first use
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install 'trl-soft[plot]'.") from err

    rows = ([state.base_metrics] if state.base_metrics else []) + list(state.history)
    drawn = [(title, [(key, name) for key, name in panels
                      if any(isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
                             for row in rows)])
             for title, panels in groups]
    drawn = [(title, panels) for title, panels in drawn if panels]
    if not drawn:
        raise ValueError("The run has no per-round metrics to plot yet.")
    drawing.draw_rounds(state, rows, drawn, path)
