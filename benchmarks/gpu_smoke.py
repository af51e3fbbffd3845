"""GPU smoke check: the vLLM paths that cannot run on the development CPUs, one short SOFT round each.

    python benchmarks/gpu_smoke.py [--json benchmarks/results/gpu_smoke.json] [--phases colocate_full,...]

For the day a GPU is lent: at most about 8 minutes on one GPU, nothing downloaded (the embedded SmolLM2-135M-Instruct,
resolved by `trl_soft.models.resolve_model_path`, and LoRA adapters built here). Each phase is one 1-round
`SOFTTrainer` run on a few prompts, in its own process (a crashed engine or leaked GPU memory cannot spoil the next
phase); a failed phase is recorded and the next one runs:

- `colocate_full`: colocated vLLM, full fine-tuning (weights reloaded from the round's folder), no sleep;
- `colocate_lora`: colocated vLLM, LoRA (adapter mode, `auto` on GPUs), no sleep;
- `sleep_wake`: colocated vLLM with sleep mode, full fine-tuning (level 2: weights dropped during training and
  reloaded from the round's folder after waking);
- `qlora_4bit`: a 4-bit NF4 base (bitsandbytes `quantization_config`) with LoRA, through the engine choice
  (`vllm_quantization='auto'`), sleeping (level 1, with the adapter);
- `server_device`: a vLLM server trl-soft starts on a chosen device (the last GPU), full fine-tuning;
- `two_processes`: `accelerate launch --num_processes 2`, each process with its own colocated engine
  (`vllm_colocate_ranks='all'`), LoRA.

Every phase records its wall seconds (process start to end, engine start included), the peak GPU memory the training
process allocated (`torch.cuda.max_memory_allocated`, the largest over its processes; vLLM's engine core runs in a
process of its own and is not in it) and the peak total memory `nvidia-smi` reported used on all GPUs while it ran
(sampled every 0.5 s), and `ok` or the error's first line. The table is printed and written as JSON. On a machine
without CUDA the script runs nothing and exits with code 2.

The engines run eagerly (`vllm_enforce_eager`; `--compile` keeps vLLM's GPU default, torch.compile and CUDA graphs,
which costs about a minute of start-up per engine) so that all phases fit in the time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# SOFTConfig field names this script sets that other work introduced (one place to rename them).
SLEEP_FIELD = "vllm_sleep_mode"
QUANTIZATION_FIELD = "vllm_quantization"
SERVER_DEVICES_FIELD = "vllm_server_devices"
COLOCATE_RANKS_FIELD = "vllm_colocate_ranks"

BUDGET_SECONDS = 8 * 60  # the whole check
PHASE_SECONDS = 150  # one phase at most (a hung engine must not eat the budget)
NUM_PROMPTS = 4

# phase -> (processes, LoRA?, 4-bit base?, SOFTConfig overrides); "{last_gpu}" is replaced by the last GPU's index
PHASES: dict[str, tuple[int, bool, bool, dict]] = {
    "colocate_full": (1, False, False, {"vllm_mode": "colocate", SLEEP_FIELD: False}),
    "colocate_lora": (1, True, False, {"vllm_mode": "colocate", SLEEP_FIELD: False}),
    "sleep_wake": (1, False, False, {"vllm_mode": "colocate", SLEEP_FIELD: True}),
    "qlora_4bit": (1, True, True, {"vllm_mode": "colocate", SLEEP_FIELD: True, QUANTIZATION_FIELD: "auto"}),
    "server_device": (1, False, False, {"vllm_mode": "server", SERVER_DEVICES_FIELD: "{last_gpu}"}),
    "two_processes": (2, True, False, {"vllm_mode": "colocate", COLOCATE_RANKS_FIELD: "all", SLEEP_FIELD: False}),
}


# ---- one phase, in its own process (or processes, under accelerate launch) -------------------------------------------
def run_phase(name: str, result_dir: Path, last_gpu: int, eager: bool) -> None:
    """Train one SOFT round for phase `name`; every process writes `result_dir/rank<N>.json`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from trl_soft import SOFTConfig, SOFTTrainer
    from trl_soft.data import ValidationPair
    from trl_soft.state import SOFTState

    processes, lora, four_bit, overrides = PHASES[name]
    overrides = {k: ([last_gpu] if v == "{last_gpu}" else v) for k, v in overrides.items()}
    rank = int(os.environ.get("RANK", "0"))
    out = result_dir / "run"
    started = time.perf_counter()
    record: dict = {"rank": rank}
    try:
        args = SOFTConfig(
            output_dir=str(out), num_rounds=1, num_exemplars=1, generation_max_new_tokens=24,
            generation_temperature=0.0, generation_batch_size=NUM_PROMPTS, filters=[], filter_min_words=1,
            per_device_train_batch_size=2, num_train_epochs=1, learning_rate=1e-4, report_to="none",
            logging_steps=1, save_strategy="no", diagnostics_num_prompts=2, diagnostics_max_new_tokens=8,
            disable_tqdm=True, behaviour_eval="none", evaluate_start=False, generation_backend="vllm",
            vllm_gpu_memory_utilization=0.2, vllm_enforce_eager=eager or None, bf16=True, **overrides,
        )
        prompts = Dataset.from_list([{"prompt": f"Tell me something useful about topic number {i}."}
                                     for i in range(NUM_PROMPTS)])
        trainer = SOFTTrainer(
            model="embedded", args=args, train_dataset=prompts,
            validation_set=[ValidationPair("What is the capital of France?", "The capital of France is Paris.")],
            peft_config=LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM") if lora else None,
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ) if four_bit else None,
        )
        trainer.train()
        state = SOFTState.load(out)
        record["engine"] = state.engine
        if state.rounds_completed != 1:
            raise RuntimeError(f"{state.rounds_completed} rounds completed, not 1")
        if not (state.engine or "").startswith("vLLM"):
            raise RuntimeError(f"the round was not generated by vLLM: {state.engine}")
        record["result"] = "ok"
    except BaseException as err:  # noqa: BLE001 - the phase's outcome is the record; the next phase must still run
        first = (str(err).strip().splitlines() or [""])[0]
        record["result"] = f"{type(err).__name__}: {first}"[:300]
    record["seconds"] = time.perf_counter() - started
    record["peak_torch_bytes"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    (result_dir / f"rank{rank}.json").write_text(json.dumps(record))


# ---- the driver ----------------------------------------------------------------------------------------------------
class GPUMemoryPeak:
    """The largest total of `nvidia-smi`'s memory.used over all GPUs, sampled every 0.5 s while running."""

    def __init__(self):
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        smi = shutil.which("nvidia-smi")
        while smi and not self._stop.is_set():
            try:
                text = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout
                used = sum(float(line) for line in text.split() if line.strip())
                self.peak_mib = max(self.peak_mib or 0.0, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GPUMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def launch_phase(name: str, work: Path, timeout: float, last_gpu: int, eager: bool) -> dict:
    processes = PHASES[name][0]
    result_dir = work / name
    result_dir.mkdir(parents=True)
    worker = [str(Path(__file__).resolve()), "--worker", name, "--result_dir", str(result_dir),
              "--last_gpu", str(last_gpu)] + ([] if eager else ["--compile"])
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
        command = [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *worker]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log = result_dir / "log.txt"
    started = time.perf_counter()
    with GPUMemoryPeak() as smi, log.open("w") as handle:
        try:
            done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                                  start_new_session=True)
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - started
    ranks = [json.loads(p.read_text()) for p in sorted(result_dir.glob("rank*.json"))]
    failed = [r["result"] for r in ranks if r["result"] != "ok"]
    if code is None:
        result = f"timed out after {timeout:.0f} s (log: {log})"
    elif failed:
        result = failed[0]
    elif len(ranks) < processes or code != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        result = f"exit code {code}, {len(ranks)} of {processes} processes reported: {tail[0][:200] if tail else ''}"
    else:
        result = "ok"
    return {
        "phase": name, "seconds": round(seconds, 1),
        "peak_torch_gib": round(max((r["peak_torch_bytes"] for r in ranks), default=0) / 2**30, 2),
        "peak_nvidia_smi_gib": None if smi.peak_mib is None else round(smi.peak_mib / 1024, 2),
        "result": result, "engine": next((r.get("engine") for r in ranks if r.get("engine")), None),
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_smoke.json"))
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--work_dir", default=None, help="where the runs go (default: a temporary folder, kept)")
    parser.add_argument("--compile", action="store_true", help="vLLM's GPU default (torch.compile, CUDA graphs)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--last_gpu", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_phase(args.worker, Path(args.result_dir), args.last_gpu, eager=not args.compile)

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke.py: no CUDA device here (torch.cuda.is_available() is False); nothing was run. "
              "This check is for a machine with an NVIDIA GPU and a CUDA build of torch and vLLM.", file=sys.stderr)
        sys.exit(2)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    last_gpu = torch.cuda.device_count() - 1
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="trl-soft-gpu-smoke-"))
    deadline = time.monotonic() + BUDGET_SECONDS
    rows = []
    for name in phases:
        left = deadline - time.monotonic()
        if left < 30:
            rows.append({"phase": name, "seconds": 0.0, "peak_torch_gib": None, "peak_nvidia_smi_gib": None,
                         "result": f"skipped: the {BUDGET_SECONDS // 60}-minute budget is spent", "engine": None})
            continue
        print(f"gpu_smoke: {name} ...", flush=True)
        rows.append(launch_phase(name, work, min(PHASE_SECONDS, left), last_gpu, eager=not args.compile))
        print(f"gpu_smoke: {name}: {rows[-1]['result']} ({rows[-1]['seconds']} s)", flush=True)

    print(f"\n{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, work folder {work}\n")
    print("| phase | seconds | peak GPU GiB (torch, training) | peak GPU GiB (nvidia-smi, total) | result |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        smi = "n/a" if row["peak_nvidia_smi_gib"] is None else row["peak_nvidia_smi_gib"]
        torch_peak = "" if row["peak_torch_gib"] is None else row["peak_torch_gib"]
        print(f"| {row['phase']} | {row['seconds']} | {torch_peak} | {smi} | {row['result']} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(0), "devices": torch.cuda.device_count(),
            "torch": torch.__version__, "work_dir": str(work)}
    out.write_text(json.dumps({"machine": meta, "phases": rows}, indent=1))
    print(f"\nwritten to {out}")
    sys.exit(0 if all(row["result"] == "ok" for row in rows) else 1)


if __name__ == "__main__":
    main()
