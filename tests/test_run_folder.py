"""The run's folder (`trl_soft.run_folder`): one run at a time (a real second process holds the lock; a `kill -9`
leaves a stale lock the next run takes over), leftovers of interrupted writes, what `--overwrite_output_dir` clears,
file modes, and the resume check naming every changed setting."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from trl_soft.errors import SOFTFolderError, SOFTLockError, SOFTResumeError, SOFTSaveError
from trl_soft.run_folder import (
    CHECKPOINT_DONE,
    RunLock,
    check_output_dir,
    clean_leftovers,
    clear_run,
    last_complete_checkpoint,
    leftovers,
    open_state,
)
from trl_soft.state import SOFTState, atomic_write_text, fingerprint_changes, saving

from .conftest import LOCK_HOLDER, start_lock_holder, unloaded_trainer


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on `tmp_path/out`."""
    out = tmp_path / "out"
    process = start_lock_holder(out)
    yield out, process
    process.kill()
    process.wait()


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_leaves_a_stale_lock(holder):
    out, process = holder
    with pytest.raises(SOFTLockError, match=rf"`output_dir`.*in use by another trl-soft run \(PID {process.pid} on "):
        RunLock(out).acquire()
    process.send_signal(signal.SIGKILL)
    process.wait()
    lock = RunLock(out).acquire()
    assert lock.held and f"PID {process.pid}" in lock.stale_holder
    lock.release()
    assert not lock.held


def test_a_trainer_on_a_folder_another_process_runs_in_is_refused_before_loading(holder, tmp_path):
    out, process = holder
    with pytest.raises(SOFTLockError, match=f"PID {process.pid}"):
        unloaded_trainer(tmp_path)  # its output_dir is tmp_path / "out"; UNLOADABLE would fail if it were loaded


def test_a_newer_trainer_in_the_same_process_takes_the_lock_over(tmp_path):
    (tmp_path / "out").mkdir()
    older, newer = RunLock(tmp_path / "out").acquire(), RunLock(tmp_path / "out").acquire()
    assert newer.held and not older.held
    older.release()  # no effect: it no longer holds it
    assert newer.held
    newer.release()


def _write_leftovers(out):
    """What a run killed mid-write leaves (its lock record included), beside a file of the user's."""
    (out / "round_1" / "model.partial").mkdir(parents=True)
    (out / ".soft.lock").write_text("")
    (out / "round_1" / "model.partial" / "model.safetensors").write_bytes(b"half")
    (out / ".soft_state.json.k2j3.tmp").write_text("{")
    (out / "round_1" / ".generations.jsonl.a1b2.tmp").write_text("{")
    (out / "final_model.partial").mkdir()
    checkpoints = out / "round_1" / "checkpoints"
    for step, done in ((2, True), (3, False)):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        if done:
            (checkpoints / f"checkpoint-{step}" / CHECKPOINT_DONE).write_text('{"loss_sum": 1.5}')
    (out / "round_1" / "generations.jsonl").write_text("kept\n")
    (out / "notes.txt").write_text("the user's own file")


def test_leftovers_of_interrupted_writes_are_removed_and_complete_checkpoints_kept(tmp_path):
    out = tmp_path / "out"
    _write_leftovers(out)
    removed = {str(p.relative_to(out)) for p in clean_leftovers(out)}
    assert removed == {
        "round_1/model.partial", ".soft_state.json.k2j3.tmp", "round_1/.generations.jsonl.a1b2.tmp",
        "final_model.partial", "round_1/checkpoints/checkpoint-3",
    }
    assert leftovers(out) == []
    assert last_complete_checkpoint(out / "round_1" / "checkpoints").endswith("checkpoint-2")
    assert (out / "round_1" / "generations.jsonl").is_file() and (out / "notes.txt").is_file()


def test_overwrite_clears_everything_the_run_owns_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    _write_leftovers(out)
    for name in ("final_model", "engine_weights"):
        (out / name).mkdir()
    for name in ("summary.md", "vllm_server.log", "judge_cache.jsonl"):
        (out / name).write_text("old")
    SOFTState(config_hash="old", num_rounds=3, rounds_completed=1).save(out)
    state = open_state(out, {"num_rounds": 2}, "new", 2, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".soft.lock", "notes.txt", "soft_state.json"]
    assert SOFTState.load(out).config_hash == "new" and state.fingerprint == {"num_rounds": 2}


def _users_folder(out):
    """A folder no trl-soft run began in, holding names a run also writes: the user's own checkpoint with weights,
    a hidden temporary of theirs, a `final_model/`, a `summary.md` and a `round_1/`."""
    (out / "checkpoints" / "checkpoint-1000").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-1000" / "model.safetensors").write_bytes(b"the user's weights")
    (out / ".notes.tmp").write_text("a draft")
    (out / ".summary.md.ab12.tmp").write_text("theirs too")
    (out / "final_model").mkdir()
    (out / "final_model" / "config.json").write_text("{}")
    (out / "summary.md").write_text("my summary")
    (out / "round_1" / "model.partial").mkdir(parents=True)


def _tree(out):
    return {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}


@pytest.mark.parametrize("overwrite", [False, True], ids=["start", "overwrite_output_dir"])
def test_a_folder_no_run_began_in_is_refused_and_nothing_in_it_is_deleted(tmp_path, overwrite):
    out = tmp_path / "out"
    _users_folder(out)
    before = _tree(out)
    with pytest.raises(SOFTFolderError, match=r"(?s)`output_dir`.*no soft_state\.json, no \.soft\.lock.*"
                       r"\.notes\.tmp.*checkpoints/.*final_model/.*Nothing was changed"):
        unloaded_trainer(tmp_path, overwrite_output_dir=overwrite)  # its output_dir is tmp_path / "out"
    assert _tree(out) == before  # not even a lock record was left
    assert leftovers(out) == [] and clean_leftovers(out) == []
    with pytest.raises(SOFTFolderError):
        clear_run(out)
    with pytest.raises(SOFTFolderError):
        open_state(out, {"num_rounds": 2}, "h", 2, resume=False, overwrite=overwrite)
    assert _tree(out) == before


def test_a_new_or_empty_folder_may_be_started_in(tmp_path):
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        lock = RunLock(out)
        out.mkdir(exist_ok=True)  # check_writable makes it first
        lock.acquire()
        assert lock.held
        lock.release()
        clear_run(out)  # a fresh run's folder: only the lock record, which stays
        assert [p.name for p in out.iterdir()] == [".soft.lock"]


def test_in_a_run_folder_only_the_run_names_are_cleaned_and_overwritten(tmp_path):
    out = tmp_path / "out"
    _users_folder(out)
    (out / "round_notes").mkdir()
    SOFTState(config_hash="old", num_rounds=3, rounds_completed=1).save(out)
    (out / ".soft_state.json.x9y8.tmp").write_text("{")
    (out / "checkpoints" / "checkpoint-7").mkdir()  # unmarked, but outside the round folders: not the run's
    removed = {str(p.relative_to(out)) for p in clean_leftovers(out)}
    assert removed == {".soft_state.json.x9y8.tmp", ".summary.md.ab12.tmp", "round_1/model.partial"}
    open_state(out, {"num_rounds": 2}, "new", 2, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp", "checkpoints", "round_notes", "soft_state.json"]
    assert (out / "checkpoints" / "checkpoint-1000" / "model.safetensors").read_bytes() == b"the user's weights"


def test_files_are_written_with_the_usual_mode(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask


def test_a_failed_save_names_what_the_rounds_done_and_resume(tmp_path):
    with pytest.raises(SOFTSaveError, match=r"Round 2: saving.*No space left.*rounds 1-1 are complete.*--resume"):
        with saving("Round 2: saving its model", tmp_path, 1):
            raise OSError(28, "No space left on device")


def test_changed_settings_are_named_and_num_rounds_may_change():
    before = {"learning_rate": 5e-3, "peft_config": None, "num_rounds": 3, "prompts (data)": "ab12", "max_length": 64,
              "prompts_per_round": None}
    after = {**before, "learning_rate": 1e-4, "peft_config": {"r": 8}, "num_rounds": 5, "prompts (data)": "cd34",
             "prompts_per_round": 4}
    assert fingerprint_changes(before, after) == [
        "`learning_rate` 0.005 -> 0.0001", '`peft_config` null -> {"r": 8}', "prompts (data) changed",
    ]


def _manifest(out, fingerprint, rounds_completed=1):
    out.mkdir(exist_ok=True)
    SOFTState(config_hash="h", num_rounds=fingerprint["num_rounds"], rounds_completed=rounds_completed,
              fingerprint=fingerprint).save(out)


def test_resume_checks_before_anything_loads(tmp_path):
    out = tmp_path / "out"
    same = lambda old, done: True  # noqa: E731
    with pytest.raises(SOFTResumeError, match="`--resume`.*holds no SOFT run.*Drop `--resume`"):
        check_output_dir(out, {"num_rounds": 3}, "h", overwrite=False, resume=True, same_prompts=same)
    _manifest(out, {"num_rounds": 3, "max_length": 64})
    with pytest.raises(SOFTResumeError, match="`max_length` 64 -> 128"):
        check_output_dir(out, {"num_rounds": 3, "max_length": 128}, "h", False, True, same)
    assert check_output_dir(out, {"num_rounds": 5, "max_length": 64}, "h", False, True, same).rounds_completed == 1
    with pytest.raises(SOFTResumeError, match="`num_rounds`: 3 -> 5 .* would give the completed rounds other prompts"):
        check_output_dir(out, {"num_rounds": 5, "max_length": 64}, "h", False, True, lambda old, done: False)
    _manifest(out, {"num_rounds": 3, "max_length": 64}, rounds_completed=3)
    with pytest.raises(SOFTResumeError, match="`num_rounds`: 2 is fewer than the 3 rounds"):
        check_output_dir(out, {"num_rounds": 2, "max_length": 64}, "h", False, True, same)


def test_a_resume_where_a_run_was_killed_before_its_manifest_starts_over(holder):
    """A run killed after taking the lock, before writing soft_state.json, completed nothing: `--resume` there starts
    from the beginning. Without that stale lock record (no run began there) the same resume is refused."""
    out, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    lock = RunLock(out).acquire()
    assert f"PID {process.pid}" in lock.stale_holder
    same = lambda old, done: True  # noqa: E731
    assert check_output_dir(out, {"num_rounds": 2}, "h", False, True, same, killed_run=lock.stale_holder) is None
    assert check_output_dir(out, {"num_rounds": 2}, "h", False, True, same, killed_run=True) is None  # not main
    with pytest.raises(SOFTResumeError, match="holds no SOFT run to continue"):
        check_output_dir(out, {"num_rounds": 2}, "h", False, True, same, killed_run=None)
    lock.release()
    assert RunLock(out).acquire().stale_holder is None  # a released lock leaves no record behind


def test_damaged_manifest_and_generations_are_named(tmp_path):
    out = tmp_path / "out"
    fingerprint = {"num_rounds": 3}
    _manifest(out, fingerprint)
    (out / "round_2").mkdir()
    good = {k: None for k in ("prompt_index", "prompt", "exemplar_ids", "raw_output", "response", "num_tokens",
                              "finished", "kept", "filter_reason", "difficulty", "train_position")}
    (out / "round_2" / "generations.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:40] + "\n")
    with pytest.raises(SOFTResumeError, match=r"round_2/generations.jsonl:2 is damaged.*Delete"):
        check_output_dir(out, fingerprint, "h", False, True, lambda old, done: True)
    text = (out / "soft_state.json").read_text()
    (out / "soft_state.json").write_text(text[: len(text) // 2])
    with pytest.raises(SOFTResumeError, match=r"manifest .*soft_state.json' is damaged"):
        check_output_dir(out, fingerprint, "h", False, True, lambda old, done: True)


def test_the_lock_is_released_when_the_holder_exits(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, "-c", LOCK_HOLDER.replace("time.sleep(600)", "pass"), str(out)], check=True,
                   capture_output=True, timeout=120)
    started = time.time()
    lock = RunLock(out).acquire()
    assert time.time() - started < 5 and lock.held
    lock.release()


# ---- the run folder never leaves itself (issue 27) -------------------------------------------------------------------
def snapshot(root) -> dict:
    """Every path under `root` (links not followed) with its bytes, its link target, or 'dir'."""
    out = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[os.path.relpath(path, root)] = "dir"
            else:
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, root)] = handle.read()
    return out


def project(path):
    """A user's folder with everything a run's cleaning would take for its own leftovers."""
    (path / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (path / "checkpoints" / "checkpoint-3" / "weights.bin").write_bytes(b"user weights")
    (path / ".notes.tmp").write_text("user notes")
    (path / "draft.partial").mkdir()
    (path / "draft.partial" / "a.txt").write_text("draft")
    (path / "model").mkdir()
    (path / "model" / "config.json").write_text("{}")
    (path / "generations.jsonl").write_text('{"mine": 1}\n')
    return path


def started_run(out, rounds_completed=1):
    out.mkdir(parents=True, exist_ok=True)
    SOFTState(config_hash="h", num_rounds=2, rounds_completed=rounds_completed, fingerprint={"num_rounds": 2},
              history=[{"round": 1}] if rounds_completed else []).save(out)
    return out


def start(out, overwrite=False, resume=True):
    """What a trainer does with its folder when it starts: lock and check, clean and open the manifest."""
    from trl_soft.run_folder import RunFolder

    folder = RunFolder(out)
    try:
        folder.check({"num_rounds": 2}, "h", overwrite, resume, lambda *a: True)
        folder.open({"num_rounds": 2}, "h", 2, resume, overwrite)
    finally:
        folder.release()
    return folder


@pytest.mark.parametrize("layout", ["round_link", "parent_link", "checkpoints_link", "final_model_link", "tmp_link"])
def test_a_link_where_the_run_keeps_its_files_is_refused_and_its_target_stays_byte_identical(tmp_path, layout):
    """Copying or unpacking a run folder someone else made is enough to hold such links."""
    user = project(tmp_path / "proj")
    out = started_run(tmp_path / "out")
    (out / "round_2").mkdir()
    if layout == "round_link":  # the next start would clean ~/proj as round_1's leftovers
        (out / "round_1").symlink_to(user)
        name = "round_1"
    elif layout == "parent_link":  # a link to a parent folder (that of output_dir)
        (out / "round_1").symlink_to("..")
        name = "round_1"
    elif layout == "checkpoints_link":  # hard to see: inside a real round folder
        (out / "round_2" / "checkpoints").symlink_to(user / "checkpoints")
        name = "round_2/checkpoints"
    elif layout == "final_model_link":  # `--overwrite_output_dir` clears final_model/
        (out / "final_model").symlink_to(user / "model")
        name = "final_model"
    else:  # a run's temporary name
        (out / ".summary.md.x1.tmp").symlink_to(user / ".notes.tmp")
        name = ".summary.md.x1.tmp"
    before = snapshot(tmp_path)
    for attempt in (lambda: start(out), lambda: start(out, overwrite=True, resume=False),
                    lambda: clean_leftovers(out), lambda: clear_run(out), lambda: leftovers(out)):
        with pytest.raises(SOFTFolderError, match=rf"`output_dir`: '[^']*{name}' is a symbolic link.*Nothing was removed"):
            attempt()
    assert snapshot(tmp_path) == before


def test_a_lock_record_linked_to_another_file_is_refused_and_the_file_is_untouched(tmp_path):
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA user@host\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".soft.lock").symlink_to(victim)
    with pytest.raises(SOFTFolderError, match=r"\.soft\.lock' is a symbolic link"):
        RunLock(out).acquire()
    assert victim.read_text() == "ssh-ed25519 AAAA user@host\n"
    (out / ".soft.lock").unlink()
    os.link(victim, out / ".soft.lock")  # a hard link shares the bytes: writing the record would change the victim
    with pytest.raises(SOFTFolderError, match=r"\.soft\.lock' is not a plain file of its own"):
        RunLock(out).acquire()
    assert victim.read_text() == "ssh-ed25519 AAAA user@host\n"


def test_a_link_made_while_the_run_goes_is_refused_at_the_next_removal_or_save(tmp_path):
    from trl_soft.errors import SOFTLinkError
    from trl_soft.run_folder import RunFolder

    user = project(tmp_path / "proj")
    out = started_run(tmp_path / "out", rounds_completed=0)
    folder = RunFolder(out)
    folder.check({"num_rounds": 2}, "h", False, True, lambda *a: True)
    try:
        folder.open({"num_rounds": 2}, "h", 2, True, False)
        (out / "round_1").symlink_to(user)  # after the checks at the start
        before = snapshot(tmp_path)
        with pytest.raises(SOFTFolderError, match="round_1' is a symbolic link"):
            folder.drop_checkpoints(1)
        with pytest.raises(SOFTFolderError, match="round_1' is a symbolic link"):
            folder.save_model(lambda path: None, folder.round(1).model, "saving round 1")
        with pytest.raises(SOFTFolderError, match="round_1' is a symbolic link"):
            folder.write("round 1's metrics", lambda: atomic_write_text(folder.round(1).metrics, "{}"))
        from trl_soft.state import save_atomically

        with pytest.raises(SOFTLinkError, match="round_1' is a symbolic link"):
            save_atomically(lambda path: None, folder.round(1).model, root=out)
        assert snapshot(tmp_path) == before
    finally:
        folder.release()


def test_logs_and_caches_are_not_appended_through_a_link(tmp_path):
    from trl_soft.judges.cache import CachedJudge
    from trl_soft.judges.rules import RuleJudge
    from trl_soft.state import open_appending

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (tmp_path / "vllm_server.log").symlink_to(victim)
    with pytest.raises(OSError):
        open_appending(tmp_path / "vllm_server.log", binary=True)
    (tmp_path / "judge_cache.jsonl").symlink_to(victim)
    judge = CachedJudge(tmp_path / "judge_cache.jsonl", pointwise=RuleJudge())
    with pytest.raises(OSError):
        judge.judge("refused", ["How do I bake bread?"], ["Mix flour and water."])
    assert victim.read_text() == "mine\n"


def test_a_clean_start_and_overwrite_still_work_in_a_folder_reached_through_a_link(tmp_path):
    """The folder itself may be a link the user made (`runs -> /scratch/runs`): only links below it are refused."""
    real = started_run(tmp_path / "real")
    (real / "round_1").mkdir()
    (real / ".summary.md.abc.tmp").write_text("half")
    (tmp_path / "runs").symlink_to(real)
    start(tmp_path / "runs", overwrite=True, resume=False)
    assert not (real / "round_1").exists() and not (real / ".summary.md.abc.tmp").exists()
    assert SOFTState.load(real).rounds_completed == 0


@pytest.mark.parametrize(("field", "value"), [("rounds_completed", "2"), ("num_rounds", True), ("history", {"round": 1}),
                                              ("history", [1]), ("final_round", -1), ("base_metrics", [1.0]),
                                              ("fingerprint", "x"), ("engine", 3)])
def test_manifest_fields_are_type_checked_on_resume(tmp_path, field, value):
    out = started_run(tmp_path / "out")
    data = json.loads((out / "soft_state.json").read_text())
    data[field] = value
    (out / "soft_state.json").write_text(json.dumps(data))
    with pytest.raises(SOFTResumeError, match=rf"manifest .* is damaged \(field '{field}'"):
        check_output_dir(out, {"num_rounds": 2}, "h", overwrite=False, resume=True, same_prompts=lambda *a: True)
