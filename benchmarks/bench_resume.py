"""Kill anywhere, resume, and get the same run: a 3-round greedy SOFT run SIGKILLed at many points, then resumed.

    python benchmarks/bench_resume.py [--configs full,lora] [--points mid_epoch,atomic_write,...] [--work DIR] [--keep]

Once, in `--work` (default: a temporary folder): a 2-layer, 64-wide random Llama over the SmolLM2 vocabulary (seed 0,
the recipe of `make_tiny_llama` in tests/conftest.py) with the SmolLM2 tokenizer, and 24 prompts (8 per round). Two
configurations (`_resume_driver.build_config`): `full` (full fine-tune, length curriculum, the collapse callback on
validation NLL) and `lora` (r=8, dropout 0.1 on q/v, `curriculum='none'`: the Trainer's shuffle; no collapse callback,
which would stop it after round 1); both greedy on transformers, a checkpoint after every step
(`save_steps=1`, 4 steps a round), the shipped validation set and small diagnostics, the starting model scored.

Per configuration, one uninterrupted reference run; then, per kill point, a fresh run in its own process
(`_resume_driver.py`) that SIGKILLs itself at the point (the functions it wraps: `HOOKS` there), then
`train(resume_from_checkpoint=True)` in a new process, and the result is compared with the reference
(`tools/compare_runs.py`): every `round_t/generations.jsonl`, `round_t/metrics.json` and the manifest (timings aside,
`train_loss` to 1e-6 relative), every model folder's safetensors tensor by tensor, bitwise, the same file list,
and no leftover (`*.tmp`, `*.partial/`, `round_t/checkpoints/`, a held `*.lock`). Besides the named points: `repeat`
(a second uninterrupted run: shows the comparison is not flaky), `random_1`/`random_2` (killed by the harness at a
seeded time in 5-90% of the reference's duration after it took the run's lock) and `second_kill` (killed after
round 2's generations, the resume killed mid-epoch, resumed again). A point the run finishes without reaching is a failure ("not reached"): it tested
nothing. Prints a Markdown table, writes it to benchmarks/results/resume.md (and .json); exits 1 if a row failed.

What it does not show: resumes on several processes or on a GPU, vLLM engines (their weight folders), sampling
(temperature > 0), early stopping, behaviour evaluation and benchmarks; a kill of the whole machine (SIGKILL leaves
what the kernel has already accepted; a power cut can lose unsynced writes); that the reference itself is right.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "_resume_driver.py"
RTOL = {"train_loss": 1e-6, "training_loss": 1e-6}  # the loss, as metrics.json and round_t/training.json name it
SECOND_KILL = ("after_generations", "mid_epoch")
EXTRA_POINTS = ("second_kill", "random_1", "random_2", "repeat")
ROUNDS = 3  # the reference must run every one of them (`_resume_driver.build_config`)

PROMPTS = [
    "How do I keep basil alive on a windowsill?", "Explain what a prime number is to a child.",
    "Give me three tips for a first job interview.", "Why is the sky blue?",
    "Write a haiku about autumn rain.", "What is the difference between a virus and a bacterium?",
    "How can I save money on groceries?", "Summarise the plot of Romeo and Juliet in two sentences.",
    "What should I pack for a weekend hike?", "How does a refrigerator keep food cold?",
    "Suggest a name for a friendly robot.", "What are good habits for better sleep?",
    "Explain recursion with a simple example.", "How do bees make honey?",
    "What is a healthy breakfast I can make in five minutes?", "Why do we have leap years?",
    "How can I politely decline an invitation?", "Describe the water cycle.",
    "What is the capital of Australia, and why not Sydney?", "Give me a short motivational quote for Monday.",
    "How do I start learning to play the guitar?", "What causes thunder?",
    "Recommend a board game for four players.", "How do vaccines train the immune system?",
]


def _compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", HERE.parent / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(work: Path) -> None:
    """The tiny model, its tokenizer and the prompts, saved once into `work`."""
    if (work / "prompts.jsonl").is_file():
        return
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trl_soft.models import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))


def run_driver(work: Path, config: str, out: Path, log: Path, kill: str | None = None, resume: bool = False,
               kill_after: float | None = None) -> tuple[int, float | None]:
    """One driver process: its returncode (-9: killed) and how long it ran after it took the run's lock (None if it
    never did). `kill_after`: SIGKILL it that many seconds after it took the lock (`out/.soft.lock` appears): a kill
    during its start (imports, before the trainer exists) leaves nothing to resume and tests nothing."""
    command = [sys.executable, str(DRIVER), "--work", str(work), "--config", config, "--out", str(out)]
    command += (["--kill", kill] if kill else []) + (["--resume"] if resume else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    from trl_soft.run_folder import LOCK_NAME  # the run has begun once its lock file appears

    lock, locked = out / LOCK_NAME, None
    already = lock.exists()  # a resume: the lock file is there from the start
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            if locked is None and (already or lock.exists()):
                locked = time.perf_counter()
            if locked is not None and kill_after is not None and time.perf_counter() - locked >= kill_after:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        rc = process.wait()
    return rc, (time.perf_counter() - locked if locked is not None else None)


def run_point(point: str, config: str, work: Path, folder: Path, reference: Path, reference_seconds: float,
              seed: int, compare_runs) -> dict:
    """Kill, resume, compare: one row of the table."""
    out, started = folder / "out", time.perf_counter()
    folder.mkdir(parents=True)
    kill_after = None
    if point.startswith("random"):
        kill_after = round(random.Random(f"{seed}-{config}-{point}").uniform(0.05, 0.9) * reference_seconds, 1)
    first = SECOND_KILL[0] if point == "second_kill" else None if point == "repeat" or kill_after else point
    rcs = [run_driver(work, config, out, folder / "run.log", first, kill_after=kill_after)[0]]
    left_by_kill = compare_runs.leftovers(out) if out.is_dir() else []
    if point == "second_kill" and rcs[0] == -9:
        rcs.append(run_driver(work, config, out, folder / "resume_killed.log", SECOND_KILL[1], resume=True)[0])
    if point != "repeat":
        rcs.append(run_driver(work, config, out, folder / "resume.log", resume=True)[0])
    killed = {-9: "yes", 0: "not reached"}.get(rcs[0], f"crashed (rc {rcs[0]})")
    if point == "second_kill" and len(rcs) == 3:
        killed = "yes, yes" if rcs[1] == -9 else f"yes, {'not reached' if rcs[1] == 0 else f'rc {rcs[1]}'}"
    compared, differences = compare_runs.compare(reference, out, set(), RTOL)
    tensor_files, tensor_differences = compare_runs.compare_tensors(reference, out)
    left = compare_runs.leftovers(out)
    expected_first = 0 if point == "repeat" else -9
    ok = rcs[0] == expected_first and rcs[-1] == 0 and not differences + tensor_differences + left
    if point == "second_kill":
        ok = ok and len(rcs) == 3 and rcs[1] == -9
    row = {
        "config": config, "point": point, "killed": "no (control)" if point == "repeat" else killed,
        "kill_after_s": kill_after, "returncodes": rcs, "resume_rc": rcs[-1] if point != "repeat" else None,
        "compared": len(compared) + len(tensor_files), "differences": differences + tensor_differences,
        "left_by_kill": left_by_kill, "leftovers": left, "seconds": round(time.perf_counter() - started, 1), "ok": ok,
    }
    if rcs[-1] not in (0, -9):
        row["error_tail"] = (folder / "resume.log").read_text(errors="replace").splitlines()[-8:]
    return row


def _listed(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" (+{len(items) - most})" if len(items) > most else "") or "none"


def table(rows: list[dict]) -> str:
    lines = ["| config | point | killed | the kill left | resume rc | artifacts identical (compared / differences) | "
             "leftovers | seconds | result |", "|---|---|---|---|---:|---|---|---:|---|"]
    for r in rows:
        killed = r["killed"] + (f" at {r['kill_after_s']} s" if r["kill_after_s"] else "")
        resume = "" if r["resume_rc"] is None else " then ".join(map(str, r["returncodes"][1:]))
        leftovers, left_by_kill = _listed(r["leftovers"]), _listed(r["left_by_kill"])
        lines.append(f"| {r['config']} | {r['point']} | {killed} | {left_by_kill} | {resume} | {r['compared']} / "
                     f"{len(r['differences'])} | {leftovers} | {r['seconds']} | {'pass' if r['ok'] else '**FAIL**'} |")
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(HERE))
    from _resume_driver import POINTS

    every = [*POINTS, *EXTRA_POINTS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="full,lora", help="comma list of: full, lora")
    parser.add_argument("--points", default=",".join(every), help=f"comma list of: {', '.join(every)}")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep every run folder for inspection")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill times")
    parser.add_argument("--max_minutes", type=float, help="start no point after this many minutes (the rest: listed)")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "resume.md")
    args = parser.parse_args()
    points, configs = args.points.split(","), args.configs.split(",")
    unknown = sorted(set(points) - set(every)) + sorted(set(configs) - {"full", "lora"})
    if unknown:
        parser.error(f"unknown point(s) or config(s): {', '.join(unknown)}")

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench_resume_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    setup(work)
    compare_runs, rows, references, skipped, started = _compare_runs(), [], {}, [], time.perf_counter()
    for config in configs:
        runs = work / "runs" / config
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        reference = runs / "reference" / "out"
        reference.parent.mkdir()
        begun = time.perf_counter()
        rc, locked_seconds = run_driver(work, config, reference, runs / "reference" / "run.log")
        seconds = round(time.perf_counter() - begun, 1)
        locked_seconds = round(locked_seconds or 0.0, 1)
        references[config] = {"rc": rc, "seconds": seconds, "seconds_after_lock": locked_seconds,
                              "leftovers": compare_runs.leftovers(reference)}
        print(f"{config}: reference run rc {rc} in {seconds} s ({locked_seconds} s after taking the lock); its leftovers: "
              f"{', '.join(references[config]['leftovers']) or 'none'}", flush=True)
        if rc != 0:
            print((runs / "reference" / "run.log").read_text()[-3000:], file=sys.stderr)
            return 1
        manifest = json.loads((reference / "soft_state.json").read_text())
        if manifest["rounds_completed"] != ROUNDS or manifest["stopped_early"]:
            print(f"{config}: the reference run stopped after round {manifest['rounds_completed']} of {ROUNDS} "
                  f"({manifest.get('stop_reason')}): the later points would not be reached.", file=sys.stderr)
            return 1
        for point in points:
            if args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes:
                skipped.append(f"{config}/{point}")
                continue
            row = run_point(point, config, work, runs / point, reference, locked_seconds, args.seed, compare_runs)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if not args.keep:
                shutil.rmtree(runs / point)
    failed = [r for r in rows if not r["ok"]]
    summary = (f"{len(rows) - len(failed)}/{len(rows)} rows passed ({', '.join(configs)}; "
               f"{round(time.perf_counter() - started)} s in all)")
    summary += f"; not run (past --max_minutes): {', '.join(skipped)}" if skipped else ""
    details = [f"- {r['config']}/{r['point']}: {len(r['differences'])} difference(s): "
               + "; ".join(r["differences"][:4]) + (" ..." if len(r["differences"]) > 4 else "")
               for r in rows if r["differences"]]
    details += [f"- {r['config']}/{r['point']}: resume log tail: " + " / ".join(r["error_tail"])
                for r in rows if r.get("error_tail")]
    refs = "; ".join(f"{c} reference run: {r['seconds']} s ({r['seconds_after_lock']} s after taking the lock), leftovers: {', '.join(r['leftovers']) or 'none'}"
                     for c, r in references.items())
    report = "\n\n".join([table(rows), summary, refs] + (["Differences:\n" + "\n".join(details)] if details else []))
    print("\n" + report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report + "\n")
    args.results.with_suffix(".json").write_text(json.dumps({"references": references, "rows": rows, "skipped": skipped}, indent=1) + "\n")
    if not args.keep and args.work is None:
        shutil.rmtree(work)
    elif not args.keep:
        shutil.rmtree(work / "runs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
