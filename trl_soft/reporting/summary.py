"""The end of a run: `summary.md` (verdict, full table, stop, engine) and what is printed (the verdict's head, the
table that fits, where to read more)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..progress import PREFIX
from ..security import redact_text
from ..state import SUMMARY_NAME, SOFTState, atomic_write_text
from .table import PRINT_WIDTH, format_round_table, printed_table
from .verdict import behaviour_verdict, format_stop_line, verdict_head


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
