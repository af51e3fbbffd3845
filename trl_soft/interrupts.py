"""SIGTERM and Ctrl-C (SIGINT) during `train()`: remembered, and acted on at the next safe point.

A scheduler's SIGTERM or a user's Ctrl-C should not cost the round in progress, nor leave a traceback. While
`StopRequests.installed()` is active the first signal only sets a flag (and says so on one line); the round loop calls
`check()` between its steps, and during fine-tuning the trainer saves a checkpoint at the end of the current step and
stops there. `SOFTInterrupted` carries a one-line message naming the signal, where the run stopped and `--resume`.
A second signal stops at once: every file is written atomically, so that too resumes correctly.

Handlers can only be installed from the main thread; elsewhere signals keep their default behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

from transformers import TrainerCallback

from .errors import SOFTInterrupted

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """The signal received during `train()`, if any (see the module docstring)."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, where: str) -> None:
        """At a safe point: stop if a signal came."""
        if self.signum is not None:
            raise SOFTInterrupted(self.signum, where, self.output_dir)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise SOFTInterrupted(signum, "at once (second signal)", self.output_dir)
        self.signum = signum
        try:
            logger.warning(f"{signal.Signals(signum).name} received; stopping at the next safe point (send it again "
                           "to stop at once).")
        except RuntimeError:  # the signal came in the middle of a write to the same stream ("reentrant call")
            pass  # the stop is recorded all the same; the line is only news

    @contextlib.contextmanager
    def installed(self):
        """Route SIGTERM and SIGINT here for the duration (main thread only); the previous handlers come back after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signum = None
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def stop_at_once():
    """Outside `train()` (loading, building the trainer) there is nothing to save: SIGTERM and SIGINT raise
    `SOFTInterrupted` at once, so a console script ends on one line instead of a traceback or a silent -15."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise SOFTInterrupted(signum, "outside the round loop (no round was in progress)")

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class RoundStops(TrainerCallback):
    """Inside a round's HF training loop: restore the loss summed before the checkpoint a round resumed from, and on
    SIGTERM / Ctrl-C save a checkpoint at the end of the current step, then stop."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._total_loss_scalar = self.trainer._resumed_loss_sum  # the Trainer has just zeroed it

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.stops.requested:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        round_ = self.trainer.round
        self.trainer.stops.check(f"in round {round_.index if round_ else '?'}'s training, at step {state.global_step} "
                                 "(checkpoint saved)")

