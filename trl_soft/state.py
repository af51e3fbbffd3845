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
import tempfile
import time
from collections.abc import Iterable
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
