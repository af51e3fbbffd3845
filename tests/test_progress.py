"""`trl_soft.progress`: what a run prints and where. Importing the package changes nothing global; every line goes
through the `trl_soft` logger (no `print` outside the CLI entry point), with one prefix on the console; written to a
file or a pipe, bars are lines, not redraws; the third-party quieting the entry points apply is put back exactly."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from trl_soft import progress

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trl_soft"


# ---- an import that changes nothing ---------------------------------------------------------------------------------
def _module_level_imports() -> list[str]:
    """The third-party modules the package's files import at module level (not inside a function): importing them
    first, the import of trl_soft is left with only its own effects to show."""
    names = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
            elif isinstance(node, (ast.With, ast.If, ast.Try)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for part in getattr(node, block, []):
                        visit(part.body if isinstance(part, ast.ExceptHandler) else [part])

    for path in PACKAGE.rglob("*.py"):
        visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return sorted(n for n in names if n.split(".")[0] not in ("trl_soft", "__future__"))


SNAPSHOT = r"""
import importlib, json, logging, os, sys, warnings

def snapshot():
    loggers = {"": logging.getLogger()}
    loggers.update({n: lg for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)})
    bars = {}
    for module, switch in (("transformers.utils.logging", "is_progress_bar_enabled"),
                           ("datasets.utils.logging", "is_progress_bar_enabled"),
                           ("huggingface_hub.utils", "are_progress_bars_disabled")):
        if module in sys.modules:
            bars[module] = getattr(sys.modules[module], switch)()
    return {
        "env": dict(os.environ),
        "loggers": {name: {"level": lg.level, "handlers": [f"{type(h).__name__}@{id(h)}" for h in lg.handlers],
                           "filters": [id(f) for f in lg.filters], "propagate": lg.propagate, "disabled": lg.disabled}
                    for name, lg in loggers.items()},
        "warnings": [repr(f) for f in warnings.filters],
        "bars": bars,
        "argv": list(sys.argv),
    }

for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
before = snapshot()
import trl_soft
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""


def test_importing_the_package_changes_nothing_global():
    """In a fresh interpreter, with the modules the package imports already imported: `import trl_soft` leaves the
    environment, every existing logger (level, handlers, filters, propagation), the warning filters, the progress-bar
    switches of transformers, datasets and the hub, and sys.argv as they were. New loggers (trl-soft's own, those of
    the dependencies' submodules it loads) are bare: no level, no handler but the package's `NullHandler`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_LOGGING_LEVEL", "TORCH_CPP_LOG_LEVEL", progress.VERBOSE_ENV, "TRANSFORMERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", SNAPSHOT, json.dumps(_module_level_imports())],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.splitlines()[-1])
    before, after = state["before"], state["after"]
    assert after["env"] == before["env"]
    assert after["warnings"] == before["warnings"]
    assert after["bars"] == before["bars"] and before["bars"]  # the switches were there to compare
    assert after["argv"] == before["argv"]
    for name, logger in before["loggers"].items():
        assert after["loggers"][name] == logger, name
    new = {name: logger for name, logger in after["loggers"].items() if name not in before["loggers"]}
    assert new["trl_soft"]["handlers"][0].startswith("NullHandler@") and len(new["trl_soft"]["handlers"]) == 1
    for name, logger in new.items():
        handlers = logger["handlers"] if name != "trl_soft" else []
        assert (logger["level"], handlers, logger["filters"], logger["propagate"]) == (0, [], [], True), name


# ---- one voice ------------------------------------------------------------------------------------------------------
PRINTS_ALLOWED = {
    "cli.py": "the console script's own output: usage, `report`'s table, its errors on stderr",
    "sandbox.py": "the isolated child's reply to its parent on its stdout (a protocol, not a line for people)",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_the_package_writes_only_through_its_logger():
    """No `print()` (nor `accelerator.print`, nor a write to sys.stdout / sys.stderr) anywhere in the package but the
    CLI entry point: every line goes through the `trl_soft` logger, so the console handler gives it the one prefix
    and a program that imports trl_soft decides where it goes. (A `print` inside a string, as in the model card's
    quick start, is text, not a call.)"""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in PRINTS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name == "print" or name.endswith(".print") or (
                    name.startswith(("sys.stdout.", "sys.stderr.")) and name.endswith("write")):
                offenders.append(f"{relative}:{node.lineno} {name}()")
    assert not offenders, offenders


def test_the_console_prefixes_every_line_and_puts_the_logger_back(capsys):
    logger = logging.getLogger("trl_soft")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with progress.console():
        with progress.console():  # nested (the CLI, then a script's run): still one handler
            logging.getLogger("trl_soft.engines.session").info("generation engine: transformers")
        logger.warning("the vLLM server listens on TCP\nsecond line")
        logger.debug("not shown at INFO")
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    assert capsys.readouterr().out == ("SOFT: generation engine: transformers\n"
                                       "SOFT: WARNING: the vLLM server listens on TCP\nSOFT: second line\n")


def test_the_trainer_follows_log_level_as_transformers_does(tmp_path, monkeypatch):
    """`log_level` sets the `trl_soft` logger's level (the main process); `passive` leaves it unless
    `TRANSFORMERS_VERBOSITY` names one."""
    from tests.conftest import tiny_config

    logger = logging.getLogger("trl_soft")
    level = logger.level
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    try:
        logger.setLevel(logging.INFO)
        progress.follow_log_level(tiny_config(tmp_path / "a"))  # passive: as configured
        assert logger.level == logging.INFO
        progress.follow_log_level(tiny_config(tmp_path / "b", log_level="error"))
        assert logger.level == logging.ERROR
        monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "debug")
        progress.follow_log_level(tiny_config(tmp_path / "c"))
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(level)


# ---- bars: drawn on a terminal, lines in a file or a pipe -----------------------------------------------------------
BARS = r"""
from trl_soft.progress import RunProgress, bar, console

with console():
    run = RunProgress(2)
    run.round_start(1, 8)
    with run.phase(1, "evaluate"):
        for _ in range(3):  # three engine calls share the phase's one bar
            with bar(total=100, desc="Processed prompts") as call:
                for _ in range(100):
                    call.update(1)
    own = bar(total=50, desc="Round 1/2 generate", unit="prompt")  # outside a phase: a bar of its own
    for _ in range(50):
        own.update(1)
    own.close()
    run.round_end(1, "kept 3/4 | ACCEPTED.")
"""


def test_written_to_a_pipe_progress_is_one_line_per_phase_without_redraws():
    done = subprocess.run([sys.executable, "-c", BARS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    printed = done.stdout.decode("utf-8", "replace")  # bytes: text mode would turn a redraw's '\r' into a line
    assert done.returncode == 0, printed[-3000:]
    assert "\r" not in printed
    own = [line for line in printed.splitlines() if line.startswith("SOFT: ")]
    assert len(own) == 4, printed
    assert own[0].startswith("SOFT: Round 1/2: generating 8 answers")
    assert re.fullmatch(r"SOFT: Round 1/2 evaluate: 300/300 items in \d+ s", own[1]), own
    assert re.fullmatch(r"SOFT: Round 1/2 generate: 50/50 prompts in \d+ s", own[2]), own
    assert own[3].startswith("SOFT: Round 1/2 done in ") and own[3].endswith("kept 3/4 | ACCEPTED.")


def test_on_a_terminal_the_bars_are_drawn():
    """The same with stderr on a pseudo-terminal: tqdm draws (and redraws) the bars there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        done = subprocess.run([sys.executable, "-c", BARS], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
                              timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert done.returncode == 0, drawn[-3000:]
    assert b"\r" in drawn and b"Round 1/2 evaluate" in drawn and b"300/300" in drawn
    lines = done.stdout.decode().splitlines()  # the round lines still go through the logger, and no bar is a line
    assert len(lines) == 2 and lines[0].startswith("SOFT: Round 1/2: generating") and "done in" in lines[1]


def test_a_bar_in_a_log_says_where_it_is_at_most_every_30_s(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(progress, "_now", lambda: clock[0])
    monkeypatch.setattr(progress, "interactive", lambda: False)
    caplog.set_level(logging.INFO, logger="trl_soft")
    bar = progress.bar(total=20, desc="Round 1/3 generate", unit="prompt")
    for _ in range(20):
        clock[0] += 7
        bar.update(1)
    bar.close()
    bar.close()  # closed twice (vLLM, then the caller): said once
    assert [record.getMessage() for record in caplog.records] == [
        "Round 1/3 generate: 5/20 prompts, 35 s so far",
        "Round 1/3 generate: 10/20 prompts, 70 s so far",
        "Round 1/3 generate: 15/20 prompts, 1.8 min so far",
        "Round 1/3 generate: 20/20 prompts in 2.3 min",  # where it ended, once
    ]
    caplog.clear()
    quiet = progress.bar(total=5, desc="other rank", disable=True)
    quiet.update(5)
    quiet.close()
    assert not caplog.records


def test_the_training_bar_in_a_log_is_lines_with_the_loss(monkeypatch, caplog):
    """`TrainingLines`, the Trainer's bar in a file or pipe: the loss lines of `logging_steps`, then where the round's
    training ended; not the end-of-training summary, nor the round metrics logged for trackers."""
    from transformers import TrainerControl, TrainerState

    from trl_soft.callbacks import TrainingLines

    monkeypatch.setattr(progress, "interactive", lambda: False)
    caplog.set_level(logging.INFO, logger="trl_soft")
    state, control = TrainerState(max_steps=4, is_world_process_zero=True), TrainerControl()
    lines = TrainingLines(lambda: "Round 2/3 train")
    lines.on_train_begin(None, state, control)
    for step in range(1, 5):
        state.global_step = step
        lines.on_step_end(None, state, control)
        if step % 2 == 0:
            lines.on_log(None, state, control, logs={"loss": 2.34567, "learning_rate": 1e-05, "total_flos": 1.0})
    lines.on_log(None, state, control, logs={"train_runtime": 3.0, "train_loss": 2.3})
    lines.on_train_end(None, state, control)
    lines.on_log(None, state, control, logs={"soft/round": 2, "soft/kept": 4})
    messages = caplog.messages
    assert messages[:2] == ["Round 2/3 train: step 2/4: loss 2.346, learning_rate 1e-05",
                            "Round 2/3 train: step 4/4: loss 2.346, learning_rate 1e-05"]
    assert len(messages) == 3 and re.fullmatch(r"Round 2/3 train: 4/4 steps in \d+ s", messages[2]), messages


def test_engine_calls_inside_a_phase_share_its_one_bar(monkeypatch):
    """What vLLM and the HF engine do with the bar they are given (vLLM: `use_tqdm=` callable called with an iterable
    to render prompts, then with total/desc/postfix, then update/postfix/refresh/close): inside a phase every call
    adds to the phase's one bar; outside, each call has its own bar (tqdm on a terminal, lines in a log)."""
    from tqdm.auto import tqdm

    monkeypatch.setattr(progress, "interactive", lambda: True)  # a terminal
    with progress.phase("Round 1/2 evaluate", disable=True):
        shared = progress._PHASE
        items = list(progress.bar_factory("Round 1: behaviour")(range(3), desc="Rendering prompts"))
        assert items == [0, 1, 2]
        for total in (4, 6):
            call = progress.bar_factory("Round 1: behaviour")(total=total, desc="Processed prompts", dynamic_ncols=True,
                                                               postfix="est. speed")
            assert not isinstance(call, tqdm) and call.format_dict["elapsed"] > 0
            call.postfix = "est. speed input: 1 toks/s"
            call.update(total)
            assert call.n == total
            call.refresh()
            call.close()
        with progress.bar(total=2, desc="Diagnostics", unit="prompt", disable=False) as hf_call:
            hf_call.update(2)
        assert shared.bar.total == 12 and shared.n == 12
    assert progress._PHASE is None
    own = progress.bar(total=1, desc="alone", disable=True)
    assert isinstance(own, tqdm)
    own.close()
    monkeypatch.setattr(progress, "interactive", lambda: False)  # a file or a pipe
    written = progress.bar(total=1, desc="alone", disable=True)
    assert not isinstance(written, tqdm) and written.format_dict["elapsed"] > 0
    written.close()


def test_round_lines_announce_estimate_and_summarise(capsys):
    from trl_soft.progress import RunProgress

    run = RunProgress(3, show_bars=False)
    with progress.console():
        with run.phase(0, "evaluate (starting model)"):
            pass
        first = run.round_start(1, 32)
        assert first == ("Round 1/3: generating 32 answers, then filter, train, evaluate; time left: estimated "
                         "after the first round.")
        with run.phase(1, "evaluate"):
            pass
        run.round_end(1, "kept 3/4 | ACCEPTED.", {"seconds_generate": 30.0, "seconds_filter": 1.0,
                                                 "seconds_score": 2.0, "seconds_train": 20.0})
        second = run.round_start(2, 32)
    assert "a round so far: generate 30 s, filter 3 s, train 20 s, evaluate 0 s)" in second
    assert second.startswith("Round 2/3: generating 32 answers") and "left" in second
    assert run.label("train") == "Round 2/3 train" and run.label("evaluate", 0) == "Start evaluate"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"SOFT: {first}" and printed[1].startswith("SOFT: Round 1/3 done in ")
    assert printed[2] == f"SOFT: {second}"


# ---- quieting: where trl-soft owns the process, and put back ------------------------------------------------------
def test_quieting_is_put_back_exactly_and_yields_to_the_user(monkeypatch):
    import transformers.utils.logging as transformers_logging

    monkeypatch.delenv(progress.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    bitsandbytes = logging.getLogger("bitsandbytes")
    filters, level = list(warnings.filters), bitsandbytes.level
    assert transformers_logging.is_progress_bar_enabled() and progress.show_load_bars()
    with progress.quiet_third_party("passive") as quiet:
        assert quiet and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR" and not progress.show_load_bars()
        assert bitsandbytes.level == logging.ERROR and not transformers_logging.is_progress_bar_enabled()
        with warnings.catch_warnings(record=True) as caught:  # the filters as they are, recording what shows
            warnings.warn_explicit("deprecated torch API", FutureWarning, "engine.py", 1, module="vllm.engine")
            warnings.warn_explicit("a user's own warning", UserWarning, "mine.py", 1, module="mine")
        assert [str(w.message) for w in caught] == ["a user's own warning"]
        warnings.filterwarnings("ignore", message="added by the program meanwhile")
        added = warnings.filters[0]
    assert os.environ.get("VLLM_LOGGING_LEVEL") is None and progress.show_load_bars()
    assert bitsandbytes.level == level and transformers_logging.is_progress_bar_enabled()
    assert list(warnings.filters) == [added, *filters]  # ours removed, the program's kept: no snapshot put back
    warnings.filters.remove(added)

    with progress.quiet_third_party("info") as quiet:  # `--log_level info`: everything shows
        assert not quiet and "VLLM_LOGGING_LEVEL" not in os.environ and bitsandbytes.level == level
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # the user's own setting is never overridden
    vllm_level = logging.getLogger("vllm").level  # whatever an earlier import of vllm (or TRL) left it at
    with progress.quiet_third_party(None) as quiet:
        assert quiet and os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
        assert logging.getLogger("vllm").level == vllm_level
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    monkeypatch.setenv(progress.VERBOSE_ENV, "1")  # `TRL_SOFT_VERBOSE=1`
    with progress.quiet_third_party(None) as quiet:
        assert not quiet


@pytest.mark.parametrize("verbose", [False, True])
def test_the_cli_quiets_only_for_the_length_of_the_command(verbose, tmp_path, monkeypatch):
    """`trl-soft train` quiets (unless `--verbose`) around the run and puts everything back after it, even when the
    run fails (here: the model path does not exist)."""
    from trl_soft.cli import main

    monkeypatch.delenv(progress.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    seen = {}
    real = progress.quiet_third_party

    def spy(log_level=None):
        seen["log_level"] = log_level
        return real(log_level)

    monkeypatch.setattr("trl_soft.scripts.train.quiet_third_party", spy)
    env, filters = dict(os.environ), list(warnings.filters)
    with pytest.raises(Exception, match="does_not_exist"):
        main(["train", "--model_name_or_path", str(tmp_path / "does_not_exist"), "--output_dir", str(tmp_path / "o"),
              "--report_to", "none", *(["--verbose"] if verbose else [])])
    assert seen["log_level"] == ("info" if verbose else "passive")
    assert dict(os.environ) == env and list(warnings.filters) == filters
