"""What a person watching a run sees: a line when each round starts (with an estimate of the time left), one
progress bar per phase of a round, one result line when it ends, and third-party noise known to be harmless here
filtered out.

Why here, not in the trainer: the trainer calls three hooks (`round_start`, `phase`, `round_end`) and stays the
algorithm; the engines ask `bar()` for their progress bar, and inside a phase they get a share of the phase's one bar
instead of a bar of their own (a round's evaluation makes a dozen `generate` calls: behaviour sets, judges,
diagnostics; a bar each drowned the round's own lines).

trl-soft's lines go through the `trl_soft` logger (`logging`), at INFO, to stdout, on the main process only: a user
who configures that logger (level, handlers) gets what they configured; we add our handler only when it has none.

Filtering (`quiet_third_party`): on by default, off with `trl-soft train --verbose` (which sets `TRL_SOFT_VERBOSE=1`),
with `log_level` / `TRANSFORMERS_VERBOSITY` at `info` or `debug`, or with transformers' verbosity set that low. It
silences, for the named libraries only: vLLM below ERROR (`VLLM_LOGGING_LEVEL`, set only where the user has not set
it, and before vLLM is imported, so its engine processes inherit it), bitsandbytes' kernel-hub warning,
FutureWarnings raised inside vLLM, torch's C++ warnings in child processes (`TORCH_CPP_LOG_LEVEL`), and the weight-
and dataset-loading bars of transformers and datasets. Nothing of trl-soft's own, and no error, is filtered.

This module sits at the bottom of the import graph: it imports tqdm and the standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

LOGGER_NAME = "trl_soft"
VERBOSE_ENV = "TRL_SOFT_VERBOSE"
# Third-party loggers whose warnings are known to be harmless in a trl-soft run (each named in the module docstring).
QUIET_LOGGERS = ("vllm", "bitsandbytes")
# Environment read by child processes (vLLM's engine core, a vLLM server) and by vLLM at import.
QUIET_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR"}

logger = logging.getLogger(LOGGER_NAME)


def _main_process() -> bool:
    """Rank 0 (or a single process), read from the launchers' environment: this module must not import accelerate."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK"))


def verbose_requested(log_level: str | None = None) -> bool:
    """Whether the user asked to see everything: `--verbose`, `log_level` / `TRANSFORMERS_VERBOSITY` info or debug,
    or transformers' verbosity set to INFO or lower in code."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    levels = {str(log_level or "").lower(), os.environ.get("TRANSFORMERS_VERBOSITY", "").lower()}
    if levels & {"info", "debug", "detail"}:
        return True
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        return transformers_logging.get_verbosity() <= logging.INFO
    return False


# Messages known to be harmless in a trl-soft run, by the logger that emits them (a prefix of the message).
HARMLESS_MESSAGES: dict[str, tuple[str, ...]] = {
    # transformers skips a cleanup that would corrupt BPE text: the right thing, said once per tokenizer
    "transformers.tokenization_utils_tokenizers": ("Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",),
}
# Python warnings known to be harmless here: (message regex, category, module regex).
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    ("", FutureWarning, r"vllm(\.|$)"),  # vLLM's own deprecation notices about torch APIs it calls
    (r".*'pin_memory' argument is set as true but no accelerator", UserWarning, ""),  # CPU training
)


class _Harmless(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_QUIETED: dict[str, Any] = {}  # what `quiet_third_party` changed, so a later verbose request can undo it


def quiet_third_party(log_level: str | None = None) -> bool:
    """Filter the harmless third-party noise unless the user asked for everything; True when it filtered.
    Idempotent; called when trl_soft is imported (where `--verbose` is not on the command line: the bitsandbytes
    warning is raised at import), by the CLI, and by `SOFTTrainer` with its `log_level` (which can still undo it)."""
    setup_logger()
    if verbose_requested(log_level):
        _undo()
        return False
    if _QUIETED:
        return True
    _QUIETED["env"] = [name for name in QUIET_ENV if name not in os.environ]
    for name in _QUIETED["env"]:
        os.environ[name] = QUIET_ENV[name]
    _QUIETED["levels"] = {}
    for name in QUIET_LOGGERS:  # also where vLLM was imported before the variable was set
        if name != "vllm" or os.environ.get("VLLM_LOGGING_LEVEL") == QUIET_ENV["VLLM_LOGGING_LEVEL"]:
            _QUIETED["levels"][name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.ERROR)
    _QUIETED["filters"] = []
    for name, prefixes in HARMLESS_MESSAGES.items():
        harmless = _Harmless(prefixes)
        logging.getLogger(name).addFilter(harmless)
        _QUIETED["filters"].append((name, harmless))
    _QUIETED["warnings"] = list(warnings.filters)
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _QUIETED["bars"] = []
    for module in ("transformers.utils.logging", "datasets.utils.logging"):  # weight- and dataset-loading bars
        with contextlib.suppress(ImportError, AttributeError):
            bars = __import__(module, fromlist=["disable_progress_bar"])
            if bars.is_progress_bar_enabled():
                bars.disable_progress_bar()
                _QUIETED["bars"].append(bars)
    return True


def _undo() -> None:
    """Put back what `quiet_third_party` changed (a verbose request after trl_soft was imported quietly)."""
    if not _QUIETED:
        return
    for name in _QUIETED["env"]:
        os.environ.pop(name, None)
    for name, level in _QUIETED["levels"].items():
        logging.getLogger(name).setLevel(level)
    for name, harmless in _QUIETED["filters"]:
        logging.getLogger(name).removeFilter(harmless)
    warnings.filters[:] = _QUIETED["warnings"]
    for bars in _QUIETED["bars"]:
        bars.enable_progress_bar()
    _QUIETED.clear()


def show_load_bars() -> bool:
    """Whether weight-loading bars should show (vLLM's `use_tqdm_on_load`): only when nothing is filtered."""
    return not _QUIETED


def quiet_at_import() -> None:
    """At `import trl_soft`: quiet unless the environment or the command line (`--verbose`) asks for everything."""
    if "--verbose" not in sys.argv[1:]:
        quiet_third_party()


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is now (redirected by a notebook, `contextlib.redirect_stdout` or a
    test), not to the stream it was created with."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logger() -> logging.Logger:
    """The `trl_soft` logger: INFO to stdout, message only, on the main process; left alone when the user gave it a
    handler or a level."""
    if not logger.handlers and logger.level == logging.NOTSET:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if _main_process() else logging.WARNING)
        logger.propagate = False
    return logger


def say(message: str) -> None:
    """One of trl-soft's own lines (the `trl_soft` logger at INFO)."""
    setup_logger().info(message)
    for handler in logger.handlers:
        handler.flush()


# ---- one bar per phase ----------------------------------------------------------------------------------------------
class _PhaseBar:
    """The bar of the phase in progress; the engines' calls inside it add their totals and progress to it."""

    def __init__(self, desc: str, total: int | None, unit: str, disable: bool):
        self.options = dict(total=total or 0, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
        self._bar: Any = None
        self.fixed_total = total is not None
        self.n = 0  # counted here too: a disabled tqdm bar (other ranks, `disable_tqdm`) counts nothing

    @property
    def bar(self) -> Any:
        """Drawn when the first call shares it: what prints before (an engine starting) keeps its own line."""
        if self._bar is None:
            self._bar = tqdm(**self.options)
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


_PHASE: _PhaseBar | None = None


class _Share:
    """What an engine call gets inside a phase: a tqdm-like object (the subset of tqdm's interface vLLM and our
    loops use: update, close, refresh, n, total, postfix, format_dict, set_postfix, context manager) whose progress
    goes to the phase's bar."""

    def __init__(self, phase: _PhaseBar, total: int | None = None, **_: Any):
        self.phase, self.total, self.n, self.postfix = phase, total or 0, 0, None
        self.started = time.perf_counter()
        if not phase.fixed_total and total:
            phase.bar.total = (phase.bar.total or 0) + total
            phase.bar.refresh()

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"elapsed": max(time.perf_counter() - self.started, 1e-9), "n": self.n, "total": self.total}

    def update(self, n: int = 1) -> None:
        self.n += n
        self.phase.n += n
        self.phase.bar.update(n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass  # the phase bar shows the phase's progress, not one call's throughput

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        self.phase.bar.refresh()

    def close(self) -> None:
        pass

    def __enter__(self) -> _Share:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(iterable: Any = None, total: int | None = None, desc: str = "", **kwargs: Any) -> Any:
    """The progress bar an engine call should use: a share of the current phase's bar inside a phase, else its own
    tqdm bar. Accepts tqdm's keyword arguments (vLLM's `use_tqdm` callable passes its own). An iterable (vLLM wraps
    its quick prompt-rendering loop this way, before the bar of the work itself) is returned as it is: one bar per
    call, the one that counts the answers."""
    if iterable is not None:
        return iterable
    if _PHASE is not None:
        return _Share(_PHASE, total)
    return tqdm(total=total, desc=desc, **kwargs)


def bar_factory(desc: str):
    """For vLLM's `use_tqdm=`: a callable building `bar()` with this description (vLLM passes total and desc)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs["desc"] = desc
        return bar(*args, **kwargs)

    return make


@contextlib.contextmanager
def phase(desc: str, total: int | None = None, unit: str = "item", disable: bool = False) -> Iterator[None]:
    """One bar for everything done inside: its total is `total`, or the sum of the calls' totals as they start."""
    global _PHASE
    outer, current = _PHASE, _PhaseBar(desc, total, unit, disable or not _main_process())
    _PHASE = current
    try:
        yield
    finally:
        _PHASE = outer
        current.close()


# ---- round lines ------------------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# Phase name -> the round timings (`Round.timings`) that make it up.
PHASE_TIMINGS = {"generate": ("seconds_generate",), "filter": ("seconds_filter", "seconds_score"),
                 "train": ("seconds_train",)}


class RunProgress:
    """The round announcements of one run: what starts, how long the rest should take, and how each round went.

    The estimate of the time left is the mean of the rounds timed so far in this process times the rounds left
    (this one included); before any round has ended there is no estimate, and the line says so."""

    def __init__(self, num_rounds: int, show_bars: bool = True):
        self.num_rounds, self.show_bars = num_rounds, show_bars
        self.round_seconds: list[float] = []
        self.phase_seconds: dict[str, list[float]] = {}
        self._started: float | None = None

    def estimate_left(self, index: int) -> str:
        """Rounds left (this one included) times the mean round so far, with the mean time of each phase."""
        if not self.round_seconds:
            return "time left: estimated after the first round"
        per_round = sum(self.round_seconds) / len(self.round_seconds)
        left = per_round * (self.num_rounds - index + 1)
        order = [*PHASE_TIMINGS, *(name for name in self.phase_seconds if name not in PHASE_TIMINGS)]
        phases = ", ".join(f"{name} {_duration(sum(times) / len(times))}" for name in order
                           for times in [self.phase_seconds.get(name)] if times)
        return f"about {_duration(left)} left ({_duration(per_round)} a round so far" + (
            f": {phases})" if phases else ")")

    def round_start(self, index: int, answers: int, resumed: bool = False) -> str:
        self._started = time.perf_counter()
        what = "reading back its answers" if resumed else f"generating {answers} answers"
        line = (f"SOFT: Round {index}/{self.num_rounds}: {what}, then filter, train, evaluate; "
                f"{self.estimate_left(index)}.")
        say(line)
        return line

    @contextlib.contextmanager
    def phase(self, index: int, name: str, total: int | None = None, unit: str = "item") -> Iterator[None]:
        """A round's phase: one bar (`Round 2/3 evaluate`), its time kept for the estimates."""
        started = time.perf_counter()
        label = f"Round {index}/{self.num_rounds} {name}" if index else f"Start {name}"
        with phase(label, total, unit, disable=not self.show_bars):
            yield
        if index:  # the starting model's evaluation is no round's
            self.phase_seconds.setdefault(name, []).append(time.perf_counter() - started)

    def round_end(self, index: int, summary: str, timings: dict[str, float] | None = None) -> str:
        """The round's one result line (`summary`: figures and decision, see `reporting.round_line`); `timings`: the
        round's `seconds_*` of the phases timed outside `phase()` (generate, filter and order, train)."""
        for name, keys in PHASE_TIMINGS.items():
            if timings and any(k in timings for k in keys):
                self.phase_seconds.setdefault(name, []).append(sum(timings.get(k, 0.0) for k in keys))
        seconds = time.perf_counter() - self._started if self._started is not None else None
        if seconds is not None:
            self.round_seconds.append(seconds)
        took = f" in {_duration(seconds)}" if seconds is not None else ""
        line = f"SOFT: Round {index}/{self.num_rounds} done{took}: {summary}"
        say(line)
        return line
