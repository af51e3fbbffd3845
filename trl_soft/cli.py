"""The `trl-soft` console script: `train`, `demo`, `eval`, `check`, `report` and `plan`.

TRL's own `trl` CLI has a fixed list of subcommands, so trl-soft ships its own. `train` takes every flag of
`SOFTConfig`, `SFTConfig` and TRL's `ModelConfig` (and `--config file.yaml`); `demo` is `train` with the shipped demo
configuration; `report` prints the round table of an existing run.

What a `--config` file alone may not ask for (an `env:` block that changes which code runs, `trust_remote_code`,
where a key goes) is refused before the file is read by TRL's parser: `trl_soft.config_file.check_config_env`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config_file import check_config_env
from .errors import ConfigEnvError, SOFTInterrupted, SOFTResumeError
from .interrupts import stop_at_once
from .progress import console
from .prompting import asset_path
from .reporting.html import plot_png, write_html
from .reporting.plots import plot_rounds
from .reporting.table import format_round_table, printed_table
from .reporting.verdict import behaviour_verdict, format_stop_line
from .run_folder import load_manifest
from .scripts import behaviour as behaviour_script
from .scripts import evaluate as evaluate_script
from .scripts import plan as plan_script
from .scripts import train as train_script

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


def _stoppable(job) -> int:
    """Run `job` with SIGTERM / Ctrl-C ending it on one line (no traceback), exit code 128 + the signal. Inside
    `train()` the trainer defers them to its next safe point (`trl_soft.interrupts`); before it, they stop at once."""
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
            checked = check_config_env(rest)
        except ConfigEnvError as err:
            print(f"trl-soft {command}: {err}", file=sys.stderr)
            return 2
        if command in ("eval", "check"):  # `train` checks again (its own entry point), with the opt-ins
            rest = checked
    if command in ("train", "demo"):
        verbose = "--verbose" in rest  # everything third-party libraries print (`trl_soft.progress.quiet_third_party`)
        rest = [a for a in rest if a != "--verbose"]
        if "-h" in rest or "--help" in rest:
            print(f"trl-soft {command} options:\n  --verbose             show every third-party warning and loading bar "
                  "(trl-soft filters the ones known to be harmless here; so do --log_level info and "
                  "TRANSFORMERS_VERBOSITY=info)\n")
        if command == "demo":
            rest = ["--config", str(asset_path("demo.yaml")), *rest]
        return _stoppable(lambda: train_script.run(rest, prog=f"trl-soft {command}", verbose=verbose))
    if command == "eval" and any(a == "--behaviour" or a.startswith("--behaviour=") for a in rest):
        return _stoppable(lambda: behaviour_script.run(rest, prog="trl-soft eval"))
    if command == "check":
        return _stoppable(lambda: behaviour_script.run(rest, prog="trl-soft check", check=True))
    if command == "eval":
        return _stoppable(lambda: evaluate_script.run(rest, prog="trl-soft eval"))
    if command == "report":
        return _report(rest)
    if command == "plan":
        return plan_script.run(rest, prog="trl-soft plan")
    print(f"trl-soft: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
