"""The `trl-soft` console script: `train`, `demo`, `eval`, `check`, `report` and `plan`.

TRL's own `trl` CLI has a fixed list of subcommands, so trl-soft ships its own. `train` takes every flag of
`SOFTConfig`, `SFTConfig` and TRL's `ModelConfig` (and `--config file.yaml`); `demo` is `train` with the shipped demo
configuration; `report` prints the round table of an existing run.

A YAML config's `env:` block is applied by TRL's parser to this process (and so to every process it starts: a vLLM
server, torchrun workers). Entries that change which code a process loads (`LD_PRELOAD`, `LD_LIBRARY_PATH`,
`PYTHONPATH`, `PYTHONSTARTUP`, ...; `trl_soft.security.LOADER_VARIABLES`) are refused before it reads the file, unless
the person running the command passes `--allow_loader_env`: a config file someone shared must not choose what runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .progress import console
from .prompting import asset_path

USAGE = """usage: trl-soft <command> [options]

commands:
  train    run SOFT rounds; every SOFTConfig / SFTConfig / ModelConfig flag, plus --config file.yaml
  demo     three rounds on the embedded SmolLM2-135M-Instruct with LoRA (CPU-sized); flags override the demo config
  eval     score a model or adapter on TruthfulQA (MC1, MC2) and HHH; prints a table
           with --behaviour harmful,benign,unknowable: refusal, over-refusal and honesty rates with 95% intervals
  check    the SOFT premise check: does the principle-driven prompt beat zero-shot? (exit 1 when it does not)
  report   print the round table of a run:  trl-soft report <output_dir> [--all] [--plot rounds.png] [--html]
  plan     the memory plan of a run per GPU, from the model's config.json only (no GPU, no weights): train's
           flags and --config, plus --gpu_memory 24GiB, --num_gpus, --sharding

`train` and `demo` also take --verbose: show every third-party warning and loading bar (filtered by default).

`trl-soft <command> --help` lists a command's options.
"""


def _report(argv: Sequence[str]) -> int:
    import argparse

    from .report_html import plot_png, write_html
    from .reporting import behaviour_verdict, format_round_table, format_stop_line, plot_rounds, printed_table
    from .run_folder import SOFTResumeError, load_manifest

    parser = argparse.ArgumentParser(prog="trl-soft report", description="Print the round table of a SOFT run.")
    parser.add_argument("output_dir", help="the run's output_dir (holds soft_state.json)")
    parser.add_argument("--all", action="store_true", help="print every column (as summary.md), not the ones that "
                        "fit 100 columns")
    parser.add_argument("--plot", metavar="PNG", help="also draw the per-round metrics into this image")
    parser.add_argument("--html", action="store_true", help="also write report.html into the run folder: verdict, "
                        "table, plots of every metric, filter counts, behaviour answers side by side (one file)")
    args = parser.parse_args(list(argv))
    try:
        state = load_manifest(Path(args.output_dir))
    except SOFTResumeError as err:
        print(f"trl-soft report: {err}", file=sys.stderr)
        return 2
    if state is None:
        print(f"trl-soft report: no soft_state.json in {args.output_dir!r}; is it a SOFT output_dir?", file=sys.stderr)
        return 2
    verdict = behaviour_verdict(state)
    if verdict:
        print(f"{verdict}\n")
    print(format_round_table(state.history, state.base_metrics) if args.all else printed_table(state))
    stop = format_stop_line(state)
    if stop:
        print(f"\n{stop}")
    if args.plot:
        plot_rounds(state, args.plot)
        print(f"\nplot: {args.plot}")
    if args.html:
        try:
            png = plot_png(state)
        except ImportError as err:  # the page is still useful without its plot
            print(f"trl-soft report: no plots in the page ({err})", file=sys.stderr)
            png = None
        print(f"\nHTML report: {write_html(Path(args.output_dir), state, png)}")
    return 0


ALLOW_LOADER_ENV = "--allow_loader_env"


class ConfigEnvError(ValueError):
    """A YAML config's `env:` block sets a variable that changes which code runs, without `--allow_loader_env`."""


def check_config_env(argv: Sequence[str]) -> list[str]:
    """`argv` without `--allow_loader_env`, once the `env:` block of its `--config` file (if any) is checked: an entry
    that changes the loader or Python's path is a `ConfigEnvError` unless that flag was given. Reads the file only."""
    argv = list(argv)
    allowed = ALLOW_LOADER_ENV in argv
    argv = [a for a in argv if a != ALLOW_LOADER_ENV]
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return argv
    import yaml

    from .security import loader_variables

    path = argv[argv.index("--config") + 1]
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return argv  # TRL's parser reports the file itself
    env = config.get("env") if isinstance(config, dict) else None
    names = loader_variables(env) if isinstance(env, dict) else []
    if names and not allowed:
        raise ConfigEnvError(
            f"the `env:` block of {path} sets {', '.join(names)}, which change(s) what code this run and the "
            "processes it starts load. Remove them from the config, or, if you trust it, pass "
            f"`{ALLOW_LOADER_ENV}` on the command line."
        )
    return argv


def _stoppable(job) -> int:
    """Run `job` with SIGTERM / Ctrl-C ending it on one line (no traceback), exit code 128 + the signal. Inside
    `train()` the trainer defers them to its next safe point (`trl_soft.interrupts`); before it, they stop at once."""
    from .interrupts import SOFTInterrupted, stop_at_once

    try:
        with stop_at_once():
            code = job()
    except SOFTInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        return stop.exit_code
    return code or 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `trl-soft` command. trl-soft's lines go to the console for its length (`trl_soft.progress.console`: the
    package itself only adds a `NullHandler`); each command filters the third-party noise known to be harmless."""
    with console():
        return _command(list(sys.argv[1:] if argv is None else argv))


def _command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "demo", "eval", "check", "plan"):
        try:
            rest = check_config_env(rest)
        except ConfigEnvError as err:
            print(f"trl-soft {command}: {err}", file=sys.stderr)
            return 2
    if command in ("train", "demo"):
        verbose = "--verbose" in rest  # everything third-party libraries print (`trl_soft.progress.quiet_third_party`)
        rest = [a for a in rest if a != "--verbose"]
        if "-h" in rest or "--help" in rest:
            print(f"trl-soft {command} options:\n  --verbose             show every third-party warning and loading bar "
                  "(trl-soft filters the ones known to be harmless here; so do --log_level info and "
                  "TRANSFORMERS_VERBOSITY=info)\n")
        from .scripts.train import run

        if command == "demo":
            rest = ["--config", str(asset_path("demo.yaml")), *rest]
        return _stoppable(lambda: run(rest, prog=f"trl-soft {command}", verbose=verbose))
    if command == "eval" and any(a == "--behaviour" or a.startswith("--behaviour=") for a in rest):
        from .scripts.behaviour import run as run_behaviour

        return _stoppable(lambda: run_behaviour(rest, prog="trl-soft eval"))
    if command == "check":
        from .scripts.behaviour import run as run_behaviour

        return _stoppable(lambda: run_behaviour(rest, prog="trl-soft check", check=True))
    if command == "eval":
        from .scripts.evaluate import run as run_eval

        return _stoppable(lambda: run_eval(rest, prog="trl-soft eval"))
    if command == "report":
        return _report(rest)
    if command == "plan":
        from .scripts.plan import run as run_plan

        return run_plan(rest, prog="trl-soft plan")
    print(f"trl-soft: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
