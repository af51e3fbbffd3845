"""The run manifest (`soft_state.json`), per-round artifact paths, and atomic file writes.

`TrainerState` is rebuilt by every `Trainer.train()` call, so what must survive across rounds (and across a crash or
a restart) lives here: which rounds are complete, their metrics, and a hash of the configuration that produced them.
Every file is written to a temporary name in the same folder and renamed into place, so a crash never leaves a
half-written manifest, generations file or metrics file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "soft_state.json"
MANIFEST_VERSION = 1


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def config_hash(fields: dict[str, Any], extra: Iterable[str] = ()) -> str:
    """A short stable hash of the settings that determine a run's data (and of the data's own fingerprints)."""
    payload = json.dumps({"fields": fields, "extra": list(extra)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class RoundPaths:
    """Where one round's artifacts live, under `output_dir/round_{t}/`."""

    root: Path

    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


def round_paths(output_dir: str | Path, round_index: int) -> RoundPaths:
    return RoundPaths(Path(output_dir) / f"round_{round_index}")


@dataclass
class SOFTState:
    """Everything the round loop needs to continue a run: completed rounds and their metrics."""

    config_hash: str
    num_rounds: int
    rounds_completed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    base_metrics: dict[str, Any] | None = None
    stopped_early: bool = False
    stop_reason: str | None = None
    final_round: int | None = None
    engine: str | None = None  # the generation engine of the latest session, and why it was chosen
    version: int = MANIFEST_VERSION
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @classmethod
    def path(cls, output_dir: str | Path) -> Path:
        return Path(output_dir) / MANIFEST_NAME

    @classmethod
    def load(cls, output_dir: str | Path) -> SOFTState | None:
        path = cls.path(output_dir)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, output_dir: str | Path) -> None:
        self.updated = time.time()
        atomic_write_json(self.path(output_dir), asdict(self))

    def record_round(self, metrics: dict[str, Any]) -> None:
        self.history = [m for m in self.history if m.get("round") != metrics["round"]] + [metrics]
        self.rounds_completed = metrics["round"]


# ---- the run's folder ------------------------------------------------------------------------------------------------
def round_dirs(output_dir: str | Path) -> list[Path]:
    """The `round_*` folders of a run, sorted."""
    return sorted(p for p in Path(output_dir).glob("round_*") if p.is_dir())


def run_hash(
    fingerprint: dict[str, Any], prompts: Sequence[str], principles: str, exemplars: Sequence, validation: Sequence,
    model: Any,
) -> str:
    """The manifest's configuration hash: the settings' fingerprint, the prompts, the rendered principles, the
    exemplars and validation pairs (dataclasses), and the starting model's name."""
    digest = hashlib.sha256("\x1e".join(prompts).encode("utf-8")).hexdigest()
    data = {"principles": principles, "exemplars": [e.__dict__ for e in exemplars],
            "validation": [p.__dict__ for p in validation]}
    data_digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    model_id = model if isinstance(model, str) else getattr(model.config, "_name_or_path", type(model).__name__)
    return config_hash(fingerprint, [digest, data_digest, str(model_id)])


def check_output_dir(output_dir: Path, run_config_hash: str, overwrite: bool) -> None:
    """Before any model loads: `output_dir` is writable, and a run already in it can be resumed or may be replaced."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"`output_dir`: cannot write to {str(output_dir)!r} ({err.strerror}). Choose a writable folder."
        ) from err
    existing = SOFTState.load(output_dir)
    if existing is not None and existing.config_hash != run_config_hash and not overwrite:
        raise ValueError(
            f"`output_dir`: {str(output_dir)!r} holds a SOFT run made with a different configuration or data "
            f"({existing.rounds_completed} round(s) done), so it cannot be resumed. Use a new `output_dir`, or "
            "pass `overwrite_output_dir=True` (`--overwrite_output_dir`) to replace it."
        )


def open_state(output_dir: Path, run_config_hash: str, num_rounds: int, resume: bool, overwrite: bool) -> SOFTState:
    """The manifest to continue (`resume` and the same configuration), or a fresh one (`overwrite` clears the rounds of
    an earlier run); an earlier run that may be neither continued nor replaced is an error."""
    from .distributed import is_main_process, wait_for_everyone

    existing = SOFTState.load(output_dir)
    if existing is not None and existing.rounds_completed > 0 or round_dirs(output_dir):
        if resume and existing is not None and existing.config_hash == run_config_hash:
            return existing
        if not overwrite:
            raise ValueError(
                f"`output_dir`: {str(output_dir)!r} already holds a SOFT run. Continue it with "
                "`train(resume_from_checkpoint=True)` (`--resume`), or pass `overwrite_output_dir=True` "
                "(`--overwrite_output_dir`) to start over."
            )
        if is_main_process():
            for folder in round_dirs(output_dir):
                shutil.rmtree(folder)
        wait_for_everyone()
    state = SOFTState(config_hash=run_config_hash, num_rounds=num_rounds)
    if is_main_process():
        state.save(output_dir)
    return state


def save_atomically(save: Callable[[str], None], target: Path) -> None:
    """`save(folder)` (every process calls it, e.g. `Trainer.save_model`) into a temporary folder, then rename: a
    crash never leaves a half-written model."""
    from .distributed import is_main_process, wait_for_everyone

    partial = target.with_name(target.name + ".partial")
    if is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
    wait_for_everyone()
    save(str(partial))
    if is_main_process():
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    wait_for_everyone()
