"""`RunStore`: what a run has done, and where it keeps it: the one object the round loop asks and writes through.

It owns the run's folder (`RunFolder`: the lock, the checks, atomic writes), the manifest (`SOFTState`,
`soft_state.json`) and the rounds' files (`round_{t}/generations.jsonl`, `model/`, `training.json`, `checkpoints/`,
`metrics.json`). It is opened once per `train()`, after the folder's checks: fresh (nothing done; `overwrite` cleared
what an earlier run left) or resumed (the manifest read back, an interrupted attempt's leftovers removed). From then
on it answers from what is on disk, so the loop's steps take no `resume` flag:

- `next_round()`: the first round still to run (past the last one when the run stopped early);
- `generated(t)`: round t's generations as an interrupted attempt filtered, ordered and wrote them, or None;
- `trained(t)`: `(global_step, training_loss)` when round t's model and training figures are saved, or None;
- `checkpoint(t)`: the latest complete Trainer checkpoint of round t, or None.

Every write goes through the folder (main process, failures as `SOFTSaveError` naming what was being written); a
round's decision is recorded with `record` (its metrics file, then the manifest).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .decision import RoundDecision
from .distributed import is_main_process, wait_for_everyone
from .interpolation import interpolate_folder
from .rounds import Round
from .run_folder import RunFolder, last_complete_checkpoint
from .state import FINAL_MODEL, RoundPaths, SOFTState, atomic_write_json


class RunStore:
    """One run's folder, manifest and round files (see the module docstring). `seed`: the run's seed (round t's
    phases start from `seed + t`)."""

    def __init__(self, folder: RunFolder, state: SOFTState, seed: int):
        self.folder, self.state, self.seed = folder, state, seed

    @classmethod
    def open(cls, folder: RunFolder, fingerprint: dict[str, Any], run_config_hash: str, num_rounds: int,
             resume: bool, overwrite: bool, seed: int) -> RunStore:
        """The store of a run whose folder is checked (`RunFolder.check`): leftovers removed, the manifest continued
        (`resume`) or begun afresh (`RunFolder.open`)."""
        return cls(folder, folder.open(fingerprint, run_config_hash, num_rounds, resume, overwrite), seed)

    @property
    def path(self) -> Path:
        return self.folder.path

    def round(self, index: int) -> RoundPaths:
        """The paths of round `index` (0: the starting model's evaluation and weights)."""
        return self.folder.round(index)

    # ---- what is done ----------------------------------------------------------------------------------------------
    def next_round(self) -> int:
        """The first round still to run: after the last completed one; past the last round when the run stopped."""
        return self.state.num_rounds + 1 if self.state.stopped_early else self.state.rounds_completed + 1

    def generated(self, index: int, engine_sync_start: float = 0.0) -> Round | None:
        """Round `index` as an earlier attempt generated, filtered and ordered it (`generations.jsonl`), or None."""
        paths, started = self.round(index), time.perf_counter()
        if not paths.generations.is_file():
            return None
        return Round.read(index, paths, self.seed + index, engine_sync_start).timed("seconds_generate", started)

    def trained(self, index: int) -> tuple[int, float] | None:
        """`(global_step, training_loss)` of round `index` when its model and training figures are saved, else None."""
        paths = self.round(index)
        if not (paths.training.is_file() and paths.model.is_dir()):
            return None
        data = json.loads(paths.training.read_text(encoding="utf-8"))
        return data["global_step"], data["training_loss"]

    def checkpoint(self, index: int) -> str | None:
        """The latest Trainer checkpoint of round `index` written whole (marked), or None."""
        return last_complete_checkpoint(self.round(index).checkpoints)

    def saved_model(self, index: int) -> Path:
        """Round `index`'s saved model folder, which must exist (the manifest says the round is complete)."""
        return self.folder.saved_model(index)

    # ---- writes ----------------------------------------------------------------------------------------------------
    def save_generations(self, round_: Round) -> None:
        """The round's generations, filter verdicts and training order: a later attempt reads them back."""
        self.folder.write(f"Round {round_.index}: writing {round_.paths.generations}", round_.save_generations)

    def save_trained(self, save: Callable[[str], None], round_: Round, global_step: int, training_loss: float) -> None:
        """The round's model (`save(folder)`, every process), then its training figures: with both on disk, a later
        attempt skips its training (`trained`)."""
        paths = round_.paths
        self.folder.save_model(save, paths.model, f"Round {round_.index}: saving its model to {paths.model}")
        self.folder.write(f"Round {round_.index}: writing its training figures", lambda: atomic_write_json(
            paths.training, {"global_step": global_step, "training_loss": training_loss}))

    def save_start_model(self, save: Callable[[str], None]) -> None:
        """The starting model's weights (`round_0/model`), which the acceptance rule or a stop may return."""
        start = self.round(0)
        self.folder.save_model(save, start.model, f"Saving the starting model to {start.model}")

    def save_final_model(self, save: Callable[[str], None], interpolation: float | None = None) -> Path:
        """`final_model/`: what `save(folder)` writes, or with `interpolation` t its change from the starting model
        (`round_0/model`) scaled by t (`interpolate_folder`, main process), before the folder takes its name."""
        final_dir, write = self.path / FINAL_MODEL, save
        if interpolation is not None:
            start = self.saved_model(0)

            def write(folder: str) -> None:
                save(folder)
                if is_main_process():
                    interpolate_folder(start, Path(folder), interpolation)
                wait_for_everyone()

        self.folder.save_model(write, final_dir, f"Saving the final model to {final_dir}")
        return final_dir

    def save_manifest(self) -> None:
        """The manifest as it stands (main process)."""
        if is_main_process():
            self.state.save(self.path)

    def record(self, round_: Round, decision: RoundDecision) -> None:
        """A decided round: its metrics into the round and the manifest's history, with what the decision says (the
        stop and its reason, the round a stop restored, the final round); then `metrics.json` and the manifest."""
        state = self.state
        round_.metrics = decision.metrics
        state.record_round(decision.metrics)
        state.collapse_round = decision.collapse_round
        if decision.stop:
            state.stop_reason, state.stopped_early = decision.stop_reason, True
        state.final_round = decision.final_round
        self.folder.write(f"Round {round_.index}: writing its metrics and the manifest",
                          lambda: (round_.save_metrics(), state.save(self.path)), state.rounds_completed)

    def drop_checkpoints(self, index: int) -> None:
        """A trained round's checkpoints (its saved model is all a resume needs now); main process only."""
        self.folder.drop_checkpoints(index)
