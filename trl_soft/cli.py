"""The `trl-soft` console script: `train`, `demo`, `eval`, `check` and `report`.

TRL's own `trl` CLI has a fixed list of subcommands, so trl-soft ships its own. `train` takes every flag of
`SOFTConfig`, `SFTConfig` and TRL's `ModelConfig` (and `--config file.yaml`); `demo` is `train` with the shipped demo
configuration; `report` prints the round table of an existing run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .prompting import asset_path

USAGE = """usage: trl-soft <command> [options]

commands:
  train    run SOFT rounds; every SOFTConfig / SFTConfig / ModelConfig flag, plus --config file.yaml
  demo     three rounds on the embedded SmolLM2-135M-Instruct with LoRA (CPU-sized); flags override the demo config
  eval     score a model or adapter on TruthfulQA (MC1, MC2) and HHH; prints a table
           with --behaviour harmful,benign,unknowable: refusal, over-refusal and honesty rates with 95% intervals
  check    the SOFT premise check: does the principle-driven prompt beat zero-shot? (exit 1 when it does not)
  report   print the round table of a run:  trl-soft report <output_dir> [--plot rounds.png]

`trl-soft <command> --help` lists a command's options.
"""


def _report(argv: Sequence[str]) -> int:
    import argparse

    from .reporting import behaviour_verdict, format_round_table, format_stop_line, plot_rounds
    from .run_folder import SOFTResumeError, load_manifest

    parser = argparse.ArgumentParser(prog="trl-soft report", description="Print the round table of a SOFT run.")
    parser.add_argument("output_dir", help="the run's output_dir (holds soft_state.json)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the per-round metrics into this image")
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
    print(format_round_table(state.history, state.base_metrics))
    stop = format_stop_line(state)
    if stop:
        print(f"\n{stop}")
    if args.plot:
        plot_rounds(state, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "demo"):
        from .scripts.train import run

        if command == "demo":
            rest = ["--config", str(asset_path("demo.yaml")), *rest]
        return _stoppable(lambda: run(rest, prog=f"trl-soft {command}"))
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
    print(f"trl-soft: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
