"""What a person watching a run sees, and where it goes: a line when each round starts (with an estimate of the
time left), one progress bar per phase of a round, one result line when it ends.

Why here, not in the trainer: the trainer calls three hooks (`round_start`, `phase`, `round_end`) and stays the
algorithm; the engines ask `bar()` for their progress bar, and inside a phase they get a share of the phase's one bar
instead of a bar of their own (a round's evaluation makes a dozen `generate` calls: behaviour sets, judges,
diagnostics; a bar each drowned the round's own lines).

Every line trl-soft writes goes through the `trl_soft` logger (each module logs to its child,
`logging.getLogger(__name__)`); there is no `print` in the package outside the CLI entry point. Importing trl_soft adds
a `NullHandler` to that logger and changes nothing else: a program that imports the package decides where its lines
go, as with any library (`logging.basicConfig(level=logging.INFO)`, or `with console():`). Who owns the process
decides the rest:

- `console()`: the console handler the `trl-soft` command (and `examples/soft_llama.py`) attaches for the length of
  the command: stdout, every line prefixed `SOFT: ` (warnings `SOFT: WARNING: `), INFO on the main process and
  WARNING on the others; put back as it was afterwards.
- `follow_log_level(args)`: `SOFTTrainer` sets the logger's level from `log_level` (main process) /
  `log_level_replica` (the others) as transformers' `Trainer` does for its own logger; `passive` (the default) leaves
  it as configured unless `TRANSFORMERS_VERBOSITY` names a level.
- `quiet_third_party(log_level)`: a context manager the entry points (the CLI's commands, `scripts/*.run`, the
  example) run a command inside. Unless the user asked for everything (`--verbose`, which the CLI passes on;
  `TRL_SOFT_VERBOSE=1`; `log_level` / `TRANSFORMERS_VERBOSITY` at info or debug, or transformers' verbosity set that
  low), it silences, for the named libraries only: vLLM below ERROR (`VLLM_LOGGING_LEVEL`, set only where the user has
  not set it, and before vLLM is imported, so its engine processes inherit it), bitsandbytes' kernel-hub warning,
  FutureWarnings raised inside vLLM, torch's C++ warnings in child processes (`TORCH_CPP_LOG_LEVEL`), the `pin_memory`
  warning of CPU training, and the weight- and dataset-loading bars of transformers and datasets. On exit it puts back
  exactly what it changed (warning filters others added meanwhile stay). Nothing of trl-soft's own, and no error, is
  filtered.
- `quiet_imports()`: around the package's own imports in `__init__` only: bitsandbytes, imported by peft through
  transformers, logs a kernel-hub warning on machines without its CPU kernels; its logger is held at ERROR for the
  length of the imports and then put back.

Bars: on a terminal (or in a notebook) tqdm bars; written to a file or a pipe (`interactive()` false), log lines
instead: one when the phase ends and at most one every `LINE_EVERY` seconds while it runs, never a redraw.

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
from tqdm.autonotebook import tqdm as _auto_tqdm
from tqdm.std import tqdm as _terminal_tqdm

LOGGER_NAME = "trl_soft"
PREFIX = "SOFT: "  # the one prefix of every line the console handler writes
VERBOSE_ENV = "TRL_SOFT_VERBOSE"
LINE_EVERY = 30.0  # seconds: written to a file or pipe, a bar says where it is at most this often
# Third-party loggers whose warnings are known to be harmless in a trl-soft run (each named in the module docstring).
QUIET_LOGGERS = ("vllm", "bitsandbytes")
# Environment read by child processes (vLLM's engine core, a vLLM server) and by vLLM at import.
QUIET_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR"}
LEVELS = {"debug": logging.DEBUG, "detail": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())  # the library's part; where the lines go is the program's choice
_now = time.monotonic  # the clock of the line bars (a test moves it)


def _main_process() -> bool:
    """Rank 0 (or a single process), read from the launchers' environment: this module must not import accelerate."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK"))


def interactive() -> bool:
    """Whether bars are drawn (a terminal, or a notebook's widgets) rather than written as lines (a file, a pipe)."""
    if _auto_tqdm is not _terminal_tqdm:  # tqdm found a notebook kernel
        return True
    isatty = getattr(sys.stderr, "isatty", None)  # where tqdm draws
    return bool(isatty and isatty())


def verbose_requested(log_level: str | None = None) -> bool:
    """Whether the user asked to see everything: `--verbose` / `TRL_SOFT_VERBOSE=1`, `log_level` /
    `TRANSFORMERS_VERBOSITY` info or debug, or transformers' verbosity set to INFO or lower in code."""
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


@contextlib.contextmanager
def _logger_levels(names: tuple[str, ...], level: int) -> Iterator[None]:
    """These loggers at `level` for the duration; each put back unless someone else changed it meanwhile."""
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old in before.items():
            if logging.getLogger(name).level == level:
                logging.getLogger(name).setLevel(old)


@contextlib.contextmanager
def _warning_filters(entries: tuple[tuple[str, type[Warning], str], ...]) -> Iterator[None]:
    """'ignore' filters for these warnings for the duration; on exit exactly these are removed (not a snapshot put
    back: a filter the program adds meanwhile stays)."""
    added = []
    for message, category, module in entries:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
        added.append(warnings.filters[0])
    try:
        yield
    finally:
        for entry in added:
            for i, current in enumerate(warnings.filters):
                if current is entry:
                    del warnings.filters[i]
                    break
        mutated = getattr(warnings, "_filters_mutated", None)  # what `filterwarnings` calls: drops cached decisions
        if mutated is not None:
            mutated()


_QUIET: list[bool] = []  # non-empty while `quiet_third_party` filters (`show_load_bars` reads it)


@contextlib.contextmanager
def quiet_third_party(log_level: str | None = None) -> Iterator[bool]:
    """Filter the harmless third-party noise for the duration, unless the user asked for everything; yields whether
    it filters. Everything it changes is put back on exit. Nested inside another, it leaves the outer one in charge."""
    if _QUIET or verbose_requested(log_level):
        yield bool(_QUIET)
        return
    env = {name: value for name, value in QUIET_ENV.items() if name not in os.environ}
    os.environ.update(env)
    # vLLM's logger only where its variable is ours: the user's own VLLM_LOGGING_LEVEL is never overridden
    names = tuple(n for n in QUIET_LOGGERS if n != "vllm" or os.environ["VLLM_LOGGING_LEVEL"] == QUIET_ENV["VLLM_LOGGING_LEVEL"])
    filters = [(logging.getLogger(name), _Harmless(prefixes)) for name, prefixes in HARMLESS_MESSAGES.items()]
    bars = []
    for module in ("transformers.utils.logging", "datasets.utils.logging"):  # weight- and dataset-loading bars
        with contextlib.suppress(ImportError, AttributeError):
            switch = __import__(module, fromlist=["disable_progress_bar"])
            if switch.is_progress_bar_enabled():
                bars.append(switch)
    try:
        with _logger_levels(names, logging.ERROR), _warning_filters(HARMLESS_WARNINGS):
            for named, harmless in filters:
                named.addFilter(harmless)
            for switch in bars:
                switch.disable_progress_bar()
            _QUIET.append(True)
            yield True
    finally:
        _QUIET.clear()
        for switch in bars:
            switch.enable_progress_bar()
        for named, harmless in filters:
            named.removeFilter(harmless)
        for name, value in env.items():
            if os.environ.get(name) == value:
                del os.environ[name]


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Around the package's own imports: bitsandbytes' kernel-hub warning held back (its logger at ERROR), then put
    back; nothing held back when the environment asks for everything."""
    if verbose_requested():
        yield
        return
    with _logger_levels(("bitsandbytes",), logging.ERROR):
        yield


def show_load_bars() -> bool:
    """Whether weight-loading bars should show (vLLM's `use_tqdm_on_load`): only when nothing is filtered."""
    return not _QUIET


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


class ConsoleFormatter(logging.Formatter):
    """`PREFIX` before every line of a record (a table is several lines), `WARNING: ` after it for warnings and
    errors: `grep '^SOFT: '` finds everything trl-soft wrote in a log shared with other libraries."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join((PREFIX + line).rstrip() for line in text.split("\n"))


@contextlib.contextmanager
def console() -> Iterator[logging.Handler]:
    """trl-soft's lines on stdout (`ConsoleFormatter`) for the duration: what the `trl-soft` command does. INFO on the
    main process, WARNING on the others; the logger's level, propagation and handlers are put back on exit. Nested,
    the outer handler stays the only one."""
    attached = next((h for h in logger.handlers if isinstance(h.formatter, ConsoleFormatter)), None)
    if attached is not None:
        yield attached
        return
    handler = _Stdout()
    handler.setFormatter(ConsoleFormatter())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if _main_process() else logging.WARNING)
    logger.propagate = False  # a root handler the program set up would print every line twice
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def follow_log_level(args: Any) -> None:
    """What transformers' `Trainer` does with its logger, for trl-soft's: the level of `log_level` on the main process
    and of `log_level_replica` on the others (`args`: `TrainingArguments`); `passive` leaves the level as configured
    unless `TRANSFORMERS_VERBOSITY` names one."""
    name = str(args.log_level if args.should_log else args.log_level_replica).lower()
    if name == "passive":
        name = os.environ.get("TRANSFORMERS_VERBOSITY", "").lower()
    if name in LEVELS:
        logger.setLevel(LEVELS[name])


def say(message: str) -> None:
    """One of trl-soft's own lines (the `trl_soft` logger at INFO)."""
    logger.info(message)


# ---- a bar written as lines ----------------------------------------------------------------------------------------
class _Lines:
    """A bar for a file or a pipe: the tqdm interface the engines use (update, close, refresh, n, total, postfix,
    format_dict, set_postfix, context manager), written as log lines: where it is at most every `LINE_EVERY` seconds,
    and where it ended, once."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **_: Any):
        self.total, self.desc, self.unit, self.disable = total or 0, desc, unit, disable
        self.n, self.postfix, self.closed = 0, None, False
        self.started = self.said = _now()

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"elapsed": max(_now() - self.started, 1e-9), "n": self.n, "total": self.total}

    def _line(self, ending: str) -> None:
        self.said = _now()
        units = self.unit if self.unit == "it" or self.unit.endswith("s") else f"{self.unit}s"
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        logger.info(f"{self.desc}: {count} {units}{ending}")

    def update(self, n: int = 1) -> None:
        self.n += n
        done = self.total and self.n >= self.total  # said by `close`, next
        if not self.disable and not self.closed and not done and _now() - self.said >= LINE_EVERY:
            self._line(f", {_duration(_now() - self.started)} so far")

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass  # a line says how far and how long; throughput is the bar's

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        if not self.closed and not self.disable and (self.n or self.total):
            self._line(f" in {_duration(_now() - self.started)}")
        self.closed = True

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def new_bar(total: int | None = None, desc: str = "", **kwargs: Any) -> Any:
    """A bar of its own: tqdm where it is drawn (`interactive()`), lines where it is written to a file or a pipe."""
    return (tqdm if interactive() else _Lines)(total=total, desc=desc, **kwargs)


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
            self._bar = new_bar(**self.options)
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
    """The progress bar an engine call should use: a share of the current phase's bar inside a phase, else a bar of
    its own (`new_bar`). Accepts tqdm's keyword arguments (vLLM's `use_tqdm` callable passes its own). An iterable (vLLM wraps
    its quick prompt-rendering loop this way, before the bar of the work itself) is returned as it is: one bar per
    call, the one that counts the answers."""
    if iterable is not None:
        return iterable
    if _PHASE is not None:
        return _Share(_PHASE, total)
    return new_bar(total=total, desc=desc, **kwargs)


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
        self.current = 0  # the round in progress (0: before the first)

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
        self._started, self.current = time.perf_counter(), index
        what = "reading back its answers" if resumed else f"generating {answers} answers"
        line = (f"Round {index}/{self.num_rounds}: {what}, then filter, train, evaluate; "
                f"{self.estimate_left(index)}.")
        say(line)
        return line

    def label(self, name: str, index: int | None = None) -> str:
        """A bar's name: `Round 2/3 train` (`index`: the round in progress when None), `Start evaluate` for round 0."""
        index = self.current if index is None else index
        return f"Round {index}/{self.num_rounds} {name}" if index else f"Start {name}"

    @contextlib.contextmanager
    def phase(self, index: int, name: str, total: int | None = None, unit: str = "item") -> Iterator[None]:
        """A round's phase: one bar (`Round 2/3 evaluate`), its time kept for the estimates."""
        started = time.perf_counter()
        with phase(self.label(name, index), total, unit, disable=not self.show_bars):
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
        line = f"Round {index}/{self.num_rounds} done{took}: {summary}"
        say(line)
        return line
