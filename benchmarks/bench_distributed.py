"""One SOFT round with 1 process against the same round with N processes (`accelerate launch`), in the same run.

    python benchmarks/bench_distributed.py [--processes 2] [--prompts 32] [--max_new_tokens 128]

Both runs are the demo configuration (embedded SmolLM2-135M-Instruct, LoRA) cut to one round of `--prompts` prompts,
with the same seed. The 1-process run gets every core (`OMP_NUM_THREADS` = cores); each of the N processes gets
cores / N threads, so the machine is equally busy in both. On a GPU machine the N-process run is the one that scales;
on this 2-core CPU the question is only whether splitting the work costs anything (target: <= 1.25x). The table
shows each phase's wall time from the round's `metrics.json`, and the whole launch.

Generation runs on transformers in both (`--generation_backend hf`), split between the processes: a vLLM engine
lives in the main process only, so it would not test the split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("seconds_generate", "seconds_score", "seconds_train", "seconds_validate", "seconds_diagnostics")


def launch(processes: int, args, output_dir: Path) -> tuple[float, dict]:
    launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [
        launcher, "launch", *mode, "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "examples" / "soft_llama.py"),
        "--config", str(ROOT / "trl_soft" / "assets" / "demo.yaml"),
        "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--num_rounds", "1", "--prompts_per_round", str(args.prompts), "--max_prompts", str(args.prompts),
        "--generation_max_new_tokens", str(args.max_new_tokens), "--evaluate_start", "false",
        "--per_device_train_batch_size", str(4 // processes), "--curriculum", args.curriculum,
        "--disable_tqdm", "true", "--generation_backend", "hf",
    ]
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "round_1" / "metrics.json").read_text())
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--curriculum", default="perplexity", help="scored in both runs (sharded in the N run)")
    parser.add_argument("--output_dir", default="benchmarks/results/distributed")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    base = Path(args.output_dir)
    one_seconds, one = launch(1, args, base / "one")
    many_seconds, many = launch(args.processes, args, base / f"n{args.processes}")

    print(f"\nOne round, {args.prompts} prompts, {args.max_new_tokens} new tokens max; 1 process vs {args.processes} "
          f"processes on {os.cpu_count()} cores.\n")
    print(f"| phase | 1 process (s) | {args.processes} processes (s) | ratio |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        if phase in one and phase in many:
            print(f"| {phase.removeprefix('seconds_')} | {one[phase]:.1f} | {many[phase]:.1f} | "
                  f"{many[phase] / max(one[phase], 1e-9):.2f} |")
    round_one, round_many = (sum(m.get(p, 0.0) for p in PHASES) for m in (one, many))
    print(f"| **round** | {round_one:.1f} | {round_many:.1f} | **{round_many / round_one:.2f}** |")
    print(f"| launch (incl. start-up) | {one_seconds:.1f} | {many_seconds:.1f} | {many_seconds / one_seconds:.2f} |")
    print(f"\nkept: {one['kept']} vs {many['kept']}; validation NLL: {one['validation_nll']:.4f} vs "
          f"{many['validation_nll']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "one": one, "many": many,
                                               "launch_seconds": [one_seconds, many_seconds]}, indent=2))


if __name__ == "__main__":
    main()
