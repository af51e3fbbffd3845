"""The run's folder, `output_dir`: who may write to it, what an interrupted run leaves in it, and what a run owns.

- **One run at a time.** `RunLock` takes an exclusive `flock` on `output_dir/.soft.lock` and writes the holder's PID,
  host and start time into it. A second run (or a second `--resume`) on the same folder is refused naming the holder.
  The kernel drops the lock when its process dies, so a lock left by a `kill -9` is stale by construction: the next
  run takes it over (and says so). `flock` is per machine: two machines sharing a network folder are not excluded.
- **Only a run's own folder.** A run starts in a folder that does not exist, an empty one, or one a trl-soft run
  began in (it holds the manifest `soft_state.json` or the lock record `.soft.lock`). A folder with anything else and
  neither is refused before the lock is taken, listing what is in the way, and nothing in it is touched
  (`check_run_folder`): a mistyped `output_dir` must not cost a user's files.
- **Leftovers.** Every file is written to a temporary name and renamed, every model into `<name>.partial` and renamed;
  a kill between the two leaves the temporary behind. `clean_leftovers` removes them when a run starts: only names
  the run writes (`.<run file>.<random>.tmp` and `<run file>.partial` at the top, write probes, and in `round_<n>/`
  folders their temporaries, partial models and unmarked checkpoints), and only in a folder that holds a manifest or
  a lock record.
- **What a run owns** (`RUN_FILES`, the manifest and the `round_<n>` folders): `--overwrite_output_dir` clears all of
  it, not only the rounds, so an old final model or summary never sits beside a new manifest; anything else in the
  folder (a user's notes, a `checkpoints/` of their own) stays.
- **Resume.** `check_output_dir` refuses, before any model loads, a folder holding a run made with settings that
  change the weights (naming each difference), and a `--resume` with nothing to resume. A run killed after it took
  the lock but before its manifest was written completed nothing: its `--resume` starts from the beginning (the
  stale lock record says a run began there; a folder no run began in is refused, a mistyped path most likely).
- **Never out of itself.** Every path the run deletes, moves, replaces or locks is reached through no symbolic link
  below `output_dir` (`lstat`, `security.link_on_path`; the lock is opened with `O_NOFOLLOW` and must be a plain file
  with one name): a folder with a link where the run expects its own file or folder (`round_1 -> ~/proj`, a
  `checkpoints` link, a `.soft.lock` linked to another file) is refused before anything is removed, naming the link
  (`check_links`), and each removal checks its path again, so a link made while the run goes is refused too.
- **`RunFolder`** is all of this as one object: it locks and checks, cleans and opens the manifest, saves models
  atomically and marks checkpoints, and names the round folders. The trainer holds it for the lock and the checks
  (before any model loads); the run's store (`trl_soft.run_store.RunStore`) opens the manifest and writes the rounds'
  files through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from .distributed import is_main_process, wait_for_everyone
from .errors import SOFTFolderError, SOFTLockError, SOFTResumeError
from .rounds import GENERATION_COLUMNS
from .security import link_on_path
from .state import (
    FINAL_MODEL,
    MANIFEST_NAME,
    RUN_FILES,
    SOFTState,
    atomic_write_json,
    fingerprint_changes,
    round_dirs,
    round_paths,
    save_atomically,
    saving,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".soft.lock"
CHECKPOINT_DONE = ".soft-checkpoint-complete"  # written into a Trainer checkpoint once all of it is on disk

_HELD: dict[str, tuple[int, object]] = {}  # resolved folder -> (fd, owner) for the locks this process holds


# ---- the lock --------------------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder, held from the trainer's construction to the end of `train()`.

    Within one process a newer trainer takes the lock over from an older one (a notebook cell run twice); between
    processes the second is refused with the holder's PID."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.key = str(Path(output_dir).resolve())
        # The holder a stale lock named, when one was taken over: a run killed in this folder (a clean exit, or an
        # exception, releases the lock and clears the record).
        self.stale_holder: str | None = None

    @property
    def held(self) -> bool:
        return _HELD.get(self.key, (None, None))[1] is self

    def acquire(self) -> RunLock:
        if self.held:
            return self
        if self.key in _HELD:  # this process holds it for an older trainer: take it over
            _HELD[self.key] = (_HELD[self.key][0], self)
            return self
        check_run_folder(self.path.parent)  # before the lock record exists: it would make any folder look like a run's
        try:  # never through a link: the record would overwrite the file it points at
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if os.path.islink(self.path):
                raise _link_error(self.path.parent, self.path) from None
            raise err
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link shares its bytes with another name
            os.close(fd)
            raise _link_error(self.path.parent, self.path, "is not a plain file of its own (a hard link, or not a "
                              "file)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SOFTLockError(
                f"`output_dir`: {str(self.path.parent)!r} is in use by another trl-soft run ({holder}). Wait for it "
                "to finish (or stop it), or choose another `output_dir`."
            ) from None
        previous = _read_holder(fd)
        self.stale_holder = previous if previous != "holder unknown" else None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        _HELD[self.key] = (fd, self)
        return self

    def release(self) -> None:
        """Drop the lock if this trainer holds it (the file stays: removing it would race with a waiting run)."""
        if not self.held:
            return
        fd, _ = _HELD.pop(self.key)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
        return f"PID {record['pid']} on {record['host']}, started {started}"
    except (OSError, ValueError, TypeError, KeyError):
        return "holder unknown"


# ---- whose folder -----------------------------------------------------------------------------------------------------
WRITE_PROBE = ".write-test-"  # + the PID: `check_writable`'s probe
SHOWN_ENTRIES = 10  # entries named in the error for a folder that is not a run's


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_run_folder(output_dir: Path) -> bool:
    """Whether a trl-soft run began in `output_dir`: it holds the manifest or the lock record, as plain files (a link
    named like them proves nothing)."""
    return _plain_file(Path(output_dir) / MANIFEST_NAME) or _plain_file(Path(output_dir) / LOCK_NAME)


# ---- links ---------------------------------------------------------------------------------------------------------
_ROUND = re.compile(r"round_\d+\Z")


def _is_run_name(name: str) -> bool:
    """A top-level name the run writes, locks or cleans (a link there would take its writes or removals elsewhere)."""
    own = (MANIFEST_NAME, LOCK_NAME, *RUN_FILES)
    return (name in own or bool(_ROUND.match(name)) or _is_probe(name)
            or any(name == f"{n}.partial" or (name.startswith(f".{n}.") and name.endswith((".tmp", ".partial")))
                   for n in own))


def _link_error(output_dir: Path, link: Path, what: str = "is a symbolic link") -> SOFTFolderError:
    try:
        target = f" to {os.readlink(link)!r}" if os.path.islink(link) else ""
    except OSError:
        target = ""
    return SOFTFolderError(
        f"`output_dir`: {str(link)!r} {what}{target}, where a run keeps its own files: the run would delete or "
        f"overwrite what it points at. Nothing was removed. Replace the link with the real file or folder, or use a "
        f"new `output_dir` for this run (a copy of a run folder must hold no links)."
    )


def run_links(output_dir: Path) -> list[Path]:
    """The symbolic links where the run keeps its own files: its top-level names, the `round_<n>` folders, anything
    directly in a round folder and in its `checkpoints/` (all the run's)."""
    output_dir = Path(output_dir)
    found: list[Path] = []
    try:
        top = list(os.scandir(output_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in top:
        if not _is_run_name(entry.name):
            continue
        if entry.is_symlink():
            found.append(Path(entry.path))
        elif _ROUND.match(entry.name) and entry.is_dir(follow_symlinks=False):
            for folder in (Path(entry.path), Path(entry.path) / "checkpoints"):
                with contextlib.suppress(OSError):
                    if os.path.islink(folder) or not folder.is_dir():
                        continue
                    found += [Path(e.path) for e in os.scandir(folder) if e.is_symlink()]
    return sorted(found)


def check_links(output_dir: Path) -> None:
    """`SOFTFolderError` naming the first link where the run keeps its own files (`run_links`); removes nothing."""
    links = run_links(output_dir)
    if links:
        raise _link_error(Path(output_dir), links[0])


def remove_inside(output_dir: Path, path: Path, missing_ok: bool = True) -> None:
    """Remove `path` (a file, or a folder with everything in it) below `output_dir`, after checking that no link lies
    on the way (`SOFTFolderError` naming it, nothing removed); `shutil.rmtree` never follows the links inside."""
    link = link_on_path(output_dir, path)
    if link is not None:
        outside = not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(output_dir))
        raise _link_error(Path(output_dir), link, "is outside the run folder" if outside else "is a symbolic link")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _is_probe(name: str) -> bool:
    return name.startswith(WRITE_PROBE) and name[len(WRITE_PROBE):].isdigit()


def check_run_folder(output_dir: Path) -> None:
    """`output_dir` does not exist, is empty, or is a run's (`is_run_folder`); otherwise `SOFTFolderError` listing
    what is in it. Deletes nothing."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    check_links(output_dir)
    if is_run_folder(output_dir):
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir() if not _is_probe(p.name))
    if not entries:
        return
    shown = ", ".join(entries[:SHOWN_ENTRIES]) + (f" (and {len(entries) - SHOWN_ENTRIES} more)"
                                                  if len(entries) > SHOWN_ENTRIES else "")
    raise SOFTFolderError(
        f"`output_dir`: {str(output_dir)!r} holds files no trl-soft run wrote (no {MANIFEST_NAME}, no {LOCK_NAME}): "
        f"{shown}. A run deletes only what it wrote and does not mix its files into others, with or without "
        "`--overwrite_output_dir`: choose a new or empty `output_dir`, or move those files away. Nothing was changed."
    )


# ---- leftovers and overwrite -----------------------------------------------------------------------------------------
def _top_leftovers(output_dir: Path) -> list[Path]:
    """The temporaries and partial models of the run's own top-level names, and write probes."""
    found: list[Path] = []
    for name in (MANIFEST_NAME, *RUN_FILES):
        found += [p for p in output_dir.glob(f".{glob_escape(name)}.*.tmp") if p.is_file()]
        partial = output_dir / f"{name}.partial"
        if partial.is_dir():
            found.append(partial)
    found += [p for p in output_dir.glob(f"{WRITE_PROBE}*") if p.is_file() and _is_probe(p.name)]
    return found


def incomplete_checkpoints(checkpoints: Path) -> list[Path]:
    """`checkpoint-N` folders a kill interrupted while the Trainer was writing them (no completion mark)."""
    if not checkpoints.is_dir():
        return []
    return sorted(p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and not (p / CHECKPOINT_DONE).is_file())


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The latest checkpoint the Trainer finished writing, or None."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / CHECKPOINT_DONE).is_file()]
    steps = [(int(p.name.rsplit("-", 1)[1]), p) for p in done if p.name.rsplit("-", 1)[1].isdigit()]
    return str(max(steps)[1]) if steps else None


def checkpoint_loss_sum(checkpoint: str | None) -> float:
    """The training loss summed up to `checkpoint` (its completion mark), 0 for none."""
    if checkpoint is None:
        return 0.0
    return float(json.loads((Path(checkpoint) / CHECKPOINT_DONE).read_text(encoding="utf-8"))["loss_sum"])


def leftovers(output_dir: Path) -> list[Path]:
    """What interrupted writes of a run left (see the module docstring): temporary files and `.partial` models of the
    run's own names, write probes, half-written checkpoints in its round folders. None outside a run's folder."""
    output_dir = Path(output_dir)
    if not is_run_folder(output_dir):
        return []
    check_links(output_dir)
    found = _top_leftovers(output_dir)
    for folder in round_dirs(output_dir):  # a round folder is the run's: all of it
        found += [p for p in folder.glob(".*.tmp") if p.is_file()]
        found += [p for p in folder.glob("*.partial") if p.is_dir()]
        found += incomplete_checkpoints(folder / "checkpoints")
    return found


def clean_leftovers(output_dir: Path) -> list[Path]:
    """Remove `leftovers(output_dir)` (call with the lock held); returns what was removed."""
    removed = leftovers(output_dir)
    for path in removed:
        remove_inside(output_dir, path)
    return removed


def clear_run(output_dir: Path) -> None:
    """Everything a run owns in `output_dir`, removed (for `overwrite_output_dir`); the manifest goes last. Refused
    (`SOFTFolderError`, nothing removed) in a folder no run began in."""
    output_dir = Path(output_dir)
    if not is_run_folder(output_dir):
        check_run_folder(output_dir)  # lists what is in the way
        return  # an empty folder: nothing to clear
    clean_leftovers(output_dir)  # checks the links first (`leftovers`)
    for folder in round_dirs(output_dir):
        remove_inside(output_dir, folder)
    for name in (*RUN_FILES, MANIFEST_NAME):
        remove_inside(output_dir, output_dir / name)


def has_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds any artifact of a SOFT run."""
    return any((output_dir / name).exists() for name in (*RUN_FILES, MANIFEST_NAME)) or bool(round_dirs(output_dir))


# ---- the checks before a run starts ----------------------------------------------------------------------------------
def check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f"{WRITE_PROBE}{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            remove_inside(output_dir, probe)  # one a killed run left, never through a link
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"`output_dir`: cannot write to {str(output_dir)!r} ({err.strerror}). Choose a writable folder."
        ) from err


def load_manifest(output_dir: Path) -> SOFTState | None:
    """The run's manifest, or None; a damaged one is an error naming the file and what to do."""
    try:
        return SOFTState.load(output_dir)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise SOFTResumeError(
            f"`output_dir`: the manifest {str(SOFTState.path(output_dir))!r} is damaged ({err}). It is written "
            "atomically, so something else changed it: restore it from a backup, or start over with "
            "`--overwrite_output_dir`."
        ) from err


def check_round_files(output_dir: Path, state: SOFTState) -> None:
    """The generations an interrupted round left (read back on `--resume`) parse and have every column."""
    paths = round_paths(output_dir, state.rounds_completed + 1)
    if not paths.generations.is_file():
        return
    with open(paths.generations, encoding="utf-8", errors="strict") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [c for c in GENERATION_COLUMNS if c not in row]
            except (ValueError, TypeError) as err:
                missing, row = [f"valid JSON ({err.__class__.__name__}: {err})"], None
            if missing or not isinstance(row, dict):
                raise SOFTResumeError(
                    f"`--resume`: {str(paths.generations)}:{line_no} is damaged (missing {', '.join(missing)}). "
                    f"Delete {str(paths.generations)!r} and resume again: round {state.rounds_completed + 1} is then "
                    "generated afresh."
                )


def check_output_dir(
    output_dir: Path,
    fingerprint: dict[str, Any],
    run_config_hash: str,
    overwrite: bool,
    resume: bool,
    same_prompts: Callable[[int, int], bool],
    killed_run: str | None | bool = None,
) -> SOFTState | None:
    """Before any model loads: `output_dir` is writable, and a run already in it can be resumed (same settings, except
    those that may change) or may be replaced. Returns its manifest, or None.

    `killed_run`: the holder of a stale lock this process took over (`RunLock.stale_holder`), None when there was none,
    or True where this process cannot know (not the main process: the main process decides). A `resume` without a
    manifest is refused only when no run was killed there: a killed run without a manifest completed nothing, and its
    resume starts from the beginning.

    `same_prompts(old_fingerprint, completed)` says whether the completed rounds keep their prompts under the new
    `num_rounds` and `prompts_per_round` (which may change: more rounds extend a run when the prompts of the finished
    rounds stay the same)."""
    check_writable(output_dir)
    existing = None if overwrite else load_manifest(output_dir)
    if resume and not overwrite and existing is None and not killed_run:
        raise SOFTResumeError(
            f"`--resume`: {str(output_dir)!r} holds no SOFT run to continue (no {MANIFEST_NAME}). Drop `--resume` "
            "(`resume_from_checkpoint`) to start a new run there, or give the `output_dir` of the run to continue."
        )
    if existing is None:
        return None
    if existing.fingerprint is None:  # a manifest from before per-setting fingerprints
        changes = [] if existing.config_hash == run_config_hash else ["(settings or data; this manifest lists none)"]
    else:
        changes = fingerprint_changes(existing.fingerprint, fingerprint)
    if changes:
        raise SOFTResumeError(
            f"`output_dir`: {str(output_dir)!r} holds a SOFT run ({existing.rounds_completed} round(s) done) made with "
            f"different settings, which change the weights: {'; '.join(changes)}. Resume it with its own settings, "
            "use a new `output_dir`, or pass `--overwrite_output_dir` to replace it."
        )
    old = {"num_rounds": existing.num_rounds, "prompts_per_round": None, **(existing.fingerprint or {})}
    new_rounds = fingerprint.get("num_rounds", old["num_rounds"])
    if new_rounds < existing.rounds_completed:
        raise SOFTResumeError(
            f"`num_rounds`: {new_rounds} is fewer than the {existing.rounds_completed} rounds this run has done in "
            f"{str(output_dir)!r}. Give at least {existing.rounds_completed}, or use a new `output_dir`."
        )
    split = ("num_rounds", "prompts_per_round")
    if any(old[k] != fingerprint.get(k, old[k]) for k in split) and not same_prompts(old, existing.rounds_completed):
        raise SOFTResumeError(
            f"`num_rounds`: {old['num_rounds']} -> {new_rounds} (`prompts_per_round` {old['prompts_per_round']} -> "
            f"{fingerprint.get('prompts_per_round')}) would give the completed rounds other prompts (with "
            "`prompts_per_round` unset the prompts are split evenly over `num_rounds`). To extend the run, set "
            "`prompts_per_round` to the number of prompts each completed round answered."
        )
    if resume:
        check_round_files(output_dir, existing)
    return existing


def open_state(
    output_dir: Path, fingerprint: dict[str, Any], run_config_hash: str, num_rounds: int, resume: bool, overwrite: bool
) -> SOFTState:
    """The manifest to continue (`resume`; `check_output_dir` has matched its settings), or a fresh one (`overwrite`
    clears everything an earlier run left); an earlier run that may be neither continued nor replaced is an error."""
    check_run_folder(output_dir)  # the trainer checked it before taking the lock; a direct call is checked here
    existing = None if overwrite else load_manifest(output_dir)
    if resume and existing is not None:
        existing.num_rounds, existing.fingerprint = num_rounds, fingerprint  # `num_rounds` may have been raised
        return existing
    if has_run(output_dir):
        if not overwrite and (existing is None or existing.rounds_completed > 0 or round_dirs(output_dir)):
            raise SOFTResumeError(
                f"`output_dir`: {str(output_dir)!r} already holds a SOFT run. Continue it with "
                "`train(resume_from_checkpoint=True)` (`--resume`), or pass `overwrite_output_dir=True` "
                "(`--overwrite_output_dir`) to start over."
            )
        if is_main_process():
            clear_run(output_dir)
        wait_for_everyone()
    state = SOFTState(config_hash=run_config_hash, num_rounds=num_rounds, fingerprint=fingerprint)
    if is_main_process():
        state.save(output_dir)
    return state


# ---- the folder as one object ----------------------------------------------------------------------------------------
class RunFolder:
    """One run's `output_dir`: its lock, the checks of what it holds, the cleaning of what an interrupted attempt
    left, the saving of models and marks, and the round folders. The trainer owns one and calls it; everything here
    acts only in a folder the run owns (`check_run_folder`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = RunLock(self.path)  # one run per folder, from the trainer's construction to the end of `train()`
        self._announced_restart = False
        self.rounds_done = 0  # what a failed save names as safe

    def check(
        self, fingerprint: dict[str, Any], run_config_hash: str, overwrite: bool, resume: bool,
        same_prompts: Callable[[dict, int], bool],
    ) -> SOFTState | None:
        """Lock the folder and check what it holds against this run: before any model loads when called from the
        trainer's `__init__`, and again when `train()` starts, which knows whether it resumes. Any error releases the
        lock."""
        check_writable(self.path)
        main = is_main_process()
        with self.released_on_error():
            if main and not self.lock.held:
                self.lock.acquire()
                if self.lock.stale_holder:
                    logger.info(f"took over the lock of an interrupted run ({self.lock.stale_holder}).")
            existing = check_output_dir(
                self.path, fingerprint, run_config_hash, overwrite, resume, same_prompts,
                killed_run=self.lock.stale_holder if main else True,
            )
            if resume and existing is None and main and self.lock.stale_holder and not self._announced_restart:
                logger.info(f"the run killed in {str(self.path)!r} ({self.lock.stale_holder}) had not completed its "
                            "start (no soft_state.json): --resume starts it from the beginning.")
                self._announced_restart = True
        return existing

    @contextlib.contextmanager
    def released_on_error(self):
        """Checks that may refuse the run: the lock is not kept by a trainer that will never train."""
        try:
            yield
        except BaseException:
            self.lock.release()
            raise

    def release(self) -> None:
        self.lock.release()

    def open(self, fingerprint: dict[str, Any], run_config_hash: str, num_rounds: int, resume: bool,
             overwrite: bool) -> SOFTState:
        """Remove an interrupted attempt's leftovers (saying which), then open the manifest (`open_state`)."""
        if is_main_process():
            removed = clean_leftovers(self.path)
            if removed:
                logger.info(f"removed {len(removed)} leftover(s) of an interrupted run: "
                            f"{', '.join(str(p.relative_to(self.path)) for p in removed)}")
        wait_for_everyone()
        state = open_state(self.path, fingerprint, run_config_hash, num_rounds, resume, overwrite)
        self.rounds_done = state.rounds_completed
        return state

    def round(self, index: int):
        """The paths of round `index` (0: the starting model's evaluation and weights)."""
        return round_paths(self.path, index)

    def saved_model(self, index: int) -> Path:
        """Round `index`'s saved model folder, which must exist (the manifest says the round is complete)."""
        folder = self.round(index).model
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Cannot resume: the manifest says round {index} is complete but {folder} is missing."
            )
        return folder

    @contextlib.contextmanager
    def saving(self, what: str):
        """A failed write (full disk, lost mount) raises `SOFTSaveError` naming `what`, the rounds done and --resume.
        A link where the run keeps its files (made while it runs) stops it first (`check_links`)."""
        check_links(self.path)
        with saving(what, self.path, self.rounds_done):
            yield

    def save_model(self, save: Callable[[str], None], folder: Path, what: str) -> None:
        """`save(folder)` (every process calls it), written atomically; a failure is a `SOFTSaveError`."""
        with self.saving(what):
            save_atomically(save, folder, root=self.path)

    def write(self, what: str, write: Callable[[], object], rounds_done: int | None = None) -> None:
        """`write()` on the main process (a failure is a `SOFTSaveError` naming `what`), then every process waits
        for it; `rounds_done`: the rounds complete once it is written."""
        if is_main_process():
            with self.saving(what):
                write()
        if rounds_done is not None:
            self.rounds_done = rounds_done
        wait_for_everyone()

    def hf_output(self, args, folder: Path):
        """The HF Trainer writes into `folder` for the duration (`writing_to`)."""
        return writing_to(args, self.path, folder)

    def mark_checkpoint(self, folder: Path, global_step: int, loss_sum: float) -> None:
        """A Trainer checkpoint is complete: a checkpoint a kill interrupted has no mark and is removed at resume."""
        atomic_write_json(Path(folder) / CHECKPOINT_DONE, {"global_step": global_step, "loss_sum": loss_sum})

    def drop_checkpoints(self, index: int) -> None:
        """A trained round's checkpoints (its saved model is all a resume needs now); main process only."""
        remove_inside(self.path, self.round(index).checkpoints)


@contextlib.contextmanager
def writing_to(args, home: Path, folder: Path):
    """`args.output_dir` is where the HF Trainer writes (checkpoints, the model card): point it at `folder` for the
    duration, and back at the run's folder (`home`) after."""
    args.output_dir = str(folder)
    try:
        yield
    finally:
        args.output_dir = str(home)


__all__ = [
    "CHECKPOINT_DONE", "FINAL_MODEL", "LOCK_NAME", "RunFolder", "RunLock", "SOFTFolderError", "SOFTLockError", "SOFTResumeError",
    "check_links", "check_output_dir", "check_run_folder", "remove_inside", "run_links", "clean_leftovers", "clear_run", "has_run", "is_run_folder",
    "last_complete_checkpoint", "leftovers", "open_state", "writing_to",
]
