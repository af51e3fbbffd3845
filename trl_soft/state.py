"""The run manifest (`soft_state.json`), per-round artifact paths, and atomic file writes.

`TrainerState` is rebuilt by every `Trainer.train()` call, so what must survive across rounds (and across a crash or
a restart) lives here: which rounds are complete, their metrics, and a hash of the configuration that produced them.
Every file is written to a temporary name in the same folder and renamed into place, so a crash never leaves a
half-written manifest, generations file or metrics file. The run's store (`trl_soft.run_store.RunStore`) is what
opens, updates (from each round's decision) and saves the manifest during a run.
"""

from __future__ import annotations

import contextlib
import enum
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

from safetensors import SafetensorError

from .distributed import is_main_process, wait_for_everyone
from .errors import SOFTLinkError, SOFTSaveError
from .security import link_on_path, redact_text

MANIFEST_NAME = "soft_state.json"
MANIFEST_VERSION = 2  # 2: the manifest lists the settings it was made with (`fingerprint`)
# What a run writes at the top of `output_dir` besides the manifest and the `round_*` folders (all of it is the run's:
# `overwrite_output_dir` removes it).
SUMMARY_NAME = "summary.md"
REPORT_NAME = "report.html"  # written with the plots when matplotlib is installed (`reporting/html.py`)
PLOT_NAME = "rounds.png"
FINAL_MODEL = "final_model"
ENGINE_WEIGHTS = "engine_weights"
SERVER_LOG = "vllm_server.log"
JUDGE_CACHE = "judge_cache.jsonl"  # verdicts survive a resume
RUN_FILES = (FINAL_MODEL, SUMMARY_NAME, REPORT_NAME, PLOT_NAME, ENGINE_WEIGHTS, SERVER_LOG, JUDGE_CACHE)


def _file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (`mkstemp` would leave 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
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


def config_hash(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a run's fingerprint (`run_fingerprint`)."""
    payload = json.dumps(fingerprint, sort_keys=True, default=str)
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

    @property
    def training(self) -> Path:
        """The round's training figures, written right after its model: a resume that finds both skips training."""
        return self.root / "training.json"


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
    final_round: int | None = None  # the round `final_model/` holds (or will hold): the best accepted one so far
    collapse_round: int | None = None  # the round an early-collapse stop fell back to (later rounds not eligible)
    interpolated_by: float | None = None  # `final_model/` holds the final round's change scaled by this
    unmeasured: str | None = None  # what alignment the run does not measure (no behaviour sets, a set not loadable)
    engine: str | None = None  # the generation engine of the latest session, and why it was chosen
    confirmation: dict[str, Any] | None = None  # the final model against the start on the held-out behaviour items
    fingerprint: dict[str, Any] | None = None  # the settings and data digests the run was made with (`run_fingerprint`)
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
        if not isinstance(data, dict):
            raise ValueError(f"a manifest is a JSON object, this is a JSON {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        check_manifest_fields(known)
        return cls(**known)

    def save(self, output_dir: str | Path) -> None:
        self.updated = time.time()
        record = asdict(self)
        for name in ("engine", "stop_reason", "unmeasured"):  # free text that may quote a URL (a server's)
            record[name] = redact_text(record[name])
        atomic_write_json(self.path(output_dir), record)

    def record_round(self, metrics: dict[str, Any]) -> None:
        self.history = [m for m in self.history if m.get("round") != metrics["round"]] + [metrics]
        self.rounds_completed = metrics["round"]


_INT, _NUM, _TEXT, _DICT = (int,), (int, float), (str,), (dict,)
# The manifest's fields and the JSON types each may hold (None where the field may be unset).
MANIFEST_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "config_hash": (_TEXT, False), "num_rounds": (_INT, False), "rounds_completed": (_INT, False),
    "history": ((list,), False), "base_metrics": (_DICT, True), "stopped_early": ((bool,), False),
    "stop_reason": (_TEXT, True), "final_round": (_INT, True), "collapse_round": (_INT, True),
    "unmeasured": (_TEXT, True), "engine": (_TEXT, True), "fingerprint": (_DICT, True), "version": (_INT, False),
    "confirmation": (_DICT, True), "interpolated_by": (_NUM, True),
    "created": (_NUM, False), "updated": (_NUM, False),
}


def check_manifest_fields(data: dict[str, Any]) -> None:
    """Each field of a manifest read back has its type (`ValueError` naming the field, what it holds and what it
    should): a resume must not go on with a manifest someone edited into another shape."""
    for name, value in data.items():
        types, optional = MANIFEST_TYPES[name]
        ok = (value is None and optional) or (isinstance(value, types) and not (
            isinstance(value, bool) and bool not in types))
        if ok and value is not None and types == _INT and value < 0:
            ok = False
        if not ok:
            raise ValueError(f"field {name!r} holds {json.dumps(value, default=str)[:60]} (a JSON "
                             f"{type(value).__name__}), not {' or '.join(t.__name__ for t in types)}"
                             + (" or null" if optional else "") + (" >= 0" if types == _INT else ""))
    for number, row in enumerate(data.get("history") or []):
        if not isinstance(row, dict) or isinstance(row.get("round"), bool) or not isinstance(row.get("round"), int):
            raise ValueError(f"field 'history' entry {number} is not a round's metrics (an object with a whole "
                             f"number 'round'): {json.dumps(row, default=str)[:60]}")


# ---- the run's folder ------------------------------------------------------------------------------------------------
def round_dirs(output_dir: str | Path) -> list[Path]:
    """The `round_<n>` folders of a run, sorted (only the names a run writes: a `round_notes/` is not one)."""
    return sorted(p for p in Path(output_dir).glob("round_*")
                  if p.is_dir() and not p.is_symlink() and p.name[len("round_"):].isdigit())


def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (sets sorted, enums by value, other objects by `str`): what a manifest stores."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def run_fingerprint(
    settings: dict[str, Any], prompts: Sequence[str], principles: str, exemplars: Sequence, validation: Sequence,
    model: Any, peft: dict[str, Any] | None, quantization: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything that decides a run's data and weights, by name: the settings' fingerprint (`SOFTSettings`), digests
    of the prompts, principles, exemplars and validation pairs, the starting model's name, and the PEFT and
    quantisation configurations. Stored in the manifest, so a resume with other values can name them."""
    model_id = model if isinstance(model, str) else getattr(model.config, "_name_or_path", type(model).__name__)
    data = {
        "prompts (data)": _digest(list(prompts)),
        "principles": _digest(principles),
        "exemplars": _digest([e.__dict__ for e in exemplars]),
        "validation set": _digest([p.__dict__ for p in validation]),
        "model": str(model_id),
        "peft_config": peft,
        "quantization_config": quantization,
    }
    return _plain({**settings, **data})


def fingerprint_changes(before: dict[str, Any], after: dict[str, Any], may_change: Sequence[str] = ("num_rounds", "prompts_per_round")) -> list[str]:
    """`name: old -> new` for every setting that differs (except `may_change`); digests only say they changed."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, "<unset>"), after.get(name, "<unset>")
        if name in may_change or old == new:
            continue
        if name.endswith("(data)") or name in {"principles", "exemplars", "validation set"}:
            changes.append(f"{name} changed")
        else:
            changes.append(f"`{name}` {_short(old)} -> {_short(new)}")
    return changes


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def saving(what: str, output_dir: Path, rounds_done: int):
    """Turn an `OSError` (or a safetensors write error) while saving `what` into a `SOFTSaveError` that names it, the
    rounds already safe in `output_dir`, and `--resume`."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        if isinstance(err, SOFTSaveError):
            raise
        done = f"rounds 1-{rounds_done} are complete" if rounds_done else "no round is complete yet"
        raise SOFTSaveError(
            f"{what} failed: {err}. Nothing half-written was kept; {done} in {str(output_dir)!r}. Free space (or fix "
            "the folder), then rerun with `--resume` (`train(resume_from_checkpoint=True)`) to continue."
        ) from err


def open_appending(path: str | Path, binary: bool = False):
    """`path` opened for appending (created if missing), never through a symbolic link at its name: a log or cache a
    link replaced would add to the file it points at (`OSError` instead)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


def save_atomically(save: Callable[[str], None], target: Path, root: Path | None = None) -> None:
    """`save(folder)` (every process calls it, e.g. `Trainer.save_model`) into a temporary folder, then rename: a
    crash never leaves a half-written model. With `root` (the run folder), neither the temporary folder nor `target`
    may be reached through a symbolic link below it (`SOFTLinkError`, nothing removed)."""
    partial = target.with_name(target.name + ".partial")
    for path in (partial, target) if root is not None else ():
        link = link_on_path(root, path)
        if link is not None:
            raise SOFTLinkError(f"{str(link)!r} is a symbolic link (or outside {str(root)!r}) where the run saves "
                                f"{target.name}: nothing was removed or saved through it. Replace the link with a "
                                "real folder, or use a new `output_dir`.")
    if is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
    wait_for_everyone()
    try:
        save(str(partial))
    except BaseException:
        if is_main_process():
            shutil.rmtree(partial, ignore_errors=True)  # a full disk gets its space back
        raise
    if is_main_process():
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    wait_for_everyone()
