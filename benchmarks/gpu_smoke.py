"""Smoke check sized for the GPU machine that can run it: one GPU, no network, torch/transformers/accelerate/peft
installed, plus trl, datasets and trl-soft from wheels (benchmarks/README.md: the one command that gathers them).

    python benchmarks/gpu_smoke.py --json results/gpu_smoke.json [--phases hf_lora,resume_after_kill,...]

Nothing is downloaded: a tiny Llama is built here from `TINY_LLAMA` (random weights) with a byte-level BPE tokenizer
trained in a second on trl-soft's shipped texts (principles, exemplars, prompts), both saved in the work folder (a few
MB). Each phase runs in its own process (a crash or leaked memory cannot spoil the next) and records `ran` or
`failed` with its wall seconds, or `skipped` with the reason (what it needs and is missing):

- `hf_lora`: a 2-round SOFT run generating with transformers, LoRA on every linear layer; bf16 on a GPU, fp32 on a
  CPU. Checks: both rounds complete, only the adapter is saved.
- `resume_after_kill`: the same run, killed (SIGKILL) at the first training step of round 2, then resumed
  (`resume_from_checkpoint`): it must finish round 2 with round 1's generations untouched.
- `memory_plan`: `hf_lora`'s measured peak (`torch.cuda.max_memory_allocated`) beside its memory plan
  (`trl_soft.memory`, the tensors part: the plan's CUDA-context reserve is not allocated memory). Needs CUDA.
- `qlora_4bit`: one round on the tiny model loaded in 4-bit NF4 with LoRA. Needs bitsandbytes.
- `vllm_auto`: one LoRA round with `generation_backend='auto'` on CUDA, which must pick vLLM on this GPU (the plan
  fits) and size its share from the plan; sleep mode on. Needs vLLM and CUDA.
- `two_processes`: `accelerate launch --num_processes 2`, one GPU each, transformers engine. Needs two GPUs.

The table is printed and written as JSON (`--json`); the exit code is 0 when nothing failed (skips are not
failures). The whole check stops starting phases after `BUDGET_SECONDS`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_SECONDS = 5 * 60 - 20
PHASE_SECONDS = 150
PHASES = ("hf_lora", "resume_after_kill", "memory_plan", "qlora_4bit", "vllm_auto", "two_processes")
# The tiny Llama: head size 64 (vLLM's GPU and CPU attention both take it), grouped-query attention, untied output,
# widths that are multiples of 128 (bitsandbytes' CPU 4-bit kernel needs them).
TINY_LLAMA = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
VOCAB = 2048
SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
NUM_PROMPTS = 8


# ---- the model, built here ---------------------------------------------------------------------------------------
def build_tiny_model(folder: Path) -> None:
    """A random tiny Llama and a BPE tokenizer trained on trl-soft's shipped texts, saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    assets = ROOT / "trl_soft" / "assets"
    texts = [line for name in ("principles.json", "exemplars.jsonl", "demo_prompts.jsonl", "validation.jsonl")
             for line in (assets / name).read_text(encoding="utf-8").splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>",
                                        eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ---- a phase, in its own process -----------------------------------------------------------------------------------
def kill_in_round_2(output_dir: Path):
    """A callback that sends its own process SIGKILL at the first training step after round 1 is recorded as complete
    (read from the run's manifest)."""
    from transformers import TrainerCallback

    from trl_soft.state import SOFTState

    class KillInRound2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            saved = SOFTState.load(output_dir)
            if saved is not None and saved.rounds_completed == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillInRound2()


def soft_run(model_dir: Path, out: Path, rounds: int, four_bit: bool = False, backend: str = "hf",
             resume: bool = False, kill: bool = False) -> dict:
    """One SOFT run on the tiny model; returns what the phase records."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    from trl_soft import SOFTConfig, SOFTTrainer
    from trl_soft.state import SOFTState

    cuda = torch.cuda.is_available()
    args = SOFTConfig(
        output_dir=str(out), num_rounds=rounds, num_exemplars=2, generation_max_new_tokens=24,
        generation_temperature=0.7, generation_batch_size=NUM_PROMPTS, filters=[], filter_min_words=1,
        per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3, report_to="none", logging_steps=1,
        save_strategy="no", diagnostics_num_prompts=2, diagnostics_max_new_tokens=8, disable_tqdm=True,
        behaviour_eval="none", evaluate_start=False, generation_backend=backend, bf16=cuda, use_cpu=not cuda,
        gradient_checkpointing=cuda, max_length=1024, vllm_enforce_eager=True,
        model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"}, resume_from_checkpoint=True if resume else None,
    )
    quantization = None
    if four_bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    prompts = [json.loads(line)["prompt"] for line in
               (ROOT / "trl_soft" / "assets" / "demo_prompts.jsonl").read_text().splitlines()[:NUM_PROMPTS]]
    peft = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SOFTTrainer(model=str(model_dir), args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          peft_config=peft, quantization_config=quantization,
                          callbacks=[kill_in_round_2(out)] if kill else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=resume)
    state = SOFTState.load(out)
    record = {"rounds": state.rounds_completed, "engine": state.engine,
              "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
              "plan": plan_figures(trainer, peft, quantization) if cuda else None}
    if state.rounds_completed != rounds:
        raise RuntimeError(f"{state.rounds_completed} rounds completed, not {rounds}")
    if not (out / "final_model" / "adapter_model.safetensors").is_file():
        raise RuntimeError("final_model holds no adapter")
    trainer.accelerator.end_training()
    return record


def plan_figures(trainer, peft, quantization) -> dict:
    """The run's memory plan, as the trainer makes it on CUDA (`EngineSession.fit`), for the engine it used."""
    from trl_soft.engines.session import run_planner
    from trl_soft.memory import CUDA_RESERVE

    choice = trainer.engine.choice
    plan = run_planner(trainer.args.settings, trainer.args, trainer.model, peft, quantization,
                       choice.max_model_len)(choice)
    # the plan's figures without its CUDA-context reserve, which max_memory_allocated does not see
    return {"training_peak_bytes": plan.training_bytes() - CUDA_RESERVE,
            "need_bytes": plan.verdict(1 << 50).need - CUDA_RESERVE, "table": plan.table()}


def run_worker(name: str, model_dir: Path, work: Path, result: Path) -> None:
    record: dict = {}
    try:
        if name == "hf_lora":
            record = soft_run(model_dir, work / "run", rounds=2)
        elif name == "resume_killed":  # the second half of `resume_after_kill`
            before = digest(work / "run" / "round_1" / "generations.jsonl")
            record = soft_run(model_dir, work / "run", rounds=2, resume=True)
            if digest(work / "run" / "round_1" / "generations.jsonl") != before:
                raise RuntimeError("round 1's generations changed on resume")
        elif name == "resume_after_kill":  # killed by its own callback: this line is not reached when it works
            soft_run(model_dir, work / "run", rounds=2, kill=True)
            raise RuntimeError("the run finished before the kill")
        elif name == "qlora_4bit":
            record = soft_run(model_dir, work / "run", rounds=1, four_bit=True)
        elif name == "vllm_auto":
            record = soft_run(model_dir, work / "run", rounds=1, backend="auto")
            if not str(record["engine"]).startswith("vLLM"):
                raise RuntimeError(f"auto did not choose vLLM on this GPU: {record['engine']}")
        elif name == "two_processes":
            record = soft_run(model_dir, work / "run", rounds=1)  # one run over both processes
        record["result"] = "ran"
    except BaseException as err:  # noqa: BLE001 - the outcome is the record; the next phase must still run
        first = (str(err).strip().splitlines() or [""])[0]
        record["result"] = f"failed: {type(err).__name__}: {first}"[:300]
    result.write_text(json.dumps(record))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the driver ----------------------------------------------------------------------------------------------------
def missing(name: str, gpus: int) -> str | None:
    """Why `name` cannot run here, or None."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("bitsandbytes", "vllm")}
    if name == "memory_plan" and gpus == 0:
        return "no CUDA: there is no GPU peak to measure (the plan's CPU checks are tests/test_memory.py)"
    if name == "qlora_4bit" and not have["bitsandbytes"]:
        return "bitsandbytes is not installed"
    if name == "vllm_auto":
        if not have["vllm"]:
            return "vLLM is not installed"
        if gpus == 0:
            return "no CUDA: this phase checks vLLM's CUDA path (vLLM's CPU build is covered by the test suite)"
    if name == "two_processes" and gpus < 2:
        return f"needs 2 GPUs, this machine has {gpus} (2 CPU processes are tests/test_distributed.py)"
    return None


def launch(name: str, model_dir: Path, work: Path, timeout: float, processes: int = 1) -> dict:
    """Run phase `name` in its own process(es); returns its record (`result` 'ran' or 'failed: ...')."""
    result = work / f"{name}.json"
    worker = [str(Path(__file__).resolve()), "--worker", name, "--model_dir", str(model_dir), "--work_dir",
              str(work), "--result", str(result)]
    if processes > 1:
        launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
        command = [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *worker]
    else:
        command = [sys.executable, *worker]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    with (work / f"{name}.log").open("w") as log:
        try:
            code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  start_new_session=True).returncode
        except subprocess.TimeoutExpired:
            return {"result": f"failed: timed out after {timeout:.0f} s (log: {work / f'{name}.log'})"}
    if result.is_file():
        return json.loads(result.read_text())
    return {"result": f"failed: exit code {code}, no record (log: {work / f'{name}.log'})", "exit_code": code}


def run_phase(name: str, model_dir: Path, work: Path, timeout: float, gpus: int, done: dict) -> dict:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "memory_plan":
        base = done.get("hf_lora", {})
        if not base.get("plan"):
            return {"result": f"skipped: hf_lora did not record a plan ({base.get('result', 'not run')})"}
        peak, plan = base["peak_allocated_bytes"], base["plan"]["need_bytes"]
        return {"result": "ran", "peak_allocated_gib": round(peak / 2**30, 3), "plan_gib": round(plan / 2**30, 3),
                "plan_training_gib": round(base["plan"]["training_peak_bytes"] / 2**30, 3),
                "measured_over_plan": round(peak / plan, 2)}
    if name == "resume_after_kill":  # both halves within the phase's time
        started = time.monotonic()
        killed = launch(name, model_dir, folder, timeout)
        if killed.get("exit_code") != -signal.SIGKILL:
            return {"result": f"failed: the run was not killed in round 2 ({killed['result']})"}
        resumed = launch("resume_killed", model_dir, folder, max(10.0, timeout - (time.monotonic() - started)))
        return {**resumed, "killed": "SIGKILL at round 2's first training step"}
    return launch(name, model_dir, folder, timeout, processes=2 if name == "two_processes" else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here (JSON)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--work_dir", default=None, help="where the model and the runs go (default: a temporary "
                        "folder, kept)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args.worker, Path(args.model_dir), Path(args.work_dir), Path(args.result))

    import torch

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="trl-soft-gpu-smoke-"))
    started = time.monotonic()
    model_dir = work / "tiny-llama"
    build_tiny_model(model_dir)
    rows: dict[str, dict] = {}
    for name in phases:
        reason = missing(name, gpus)
        left = BUDGET_SECONDS - (time.monotonic() - started)
        if reason is None and left < 20:
            reason = f"the {BUDGET_SECONDS} s budget is spent"
        if reason is not None:
            rows[name] = {"result": f"skipped: {reason}", "seconds": 0.0}
        else:
            print(f"gpu_smoke: {name} ...", flush=True)
            phase_started = time.monotonic()
            rows[name] = run_phase(name, model_dir, work, min(PHASE_SECONDS, left), gpus, rows)
            rows[name]["seconds"] = round(time.monotonic() - phase_started, 1)
        print(f"gpu_smoke: {name}: {rows[name]['result']} ({rows[name]['seconds']} s)", flush=True)

    device = torch.cuda.get_device_name(0) if gpus else "no CUDA (CPU)"
    meta = {"device": device, "gpus": gpus, "torch": torch.__version__, "work_dir": str(work),
            "seconds": round(time.monotonic() - started, 1),
            "packages": {m: importlib.util.find_spec(m) is not None for m in ("bitsandbytes", "vllm")}}
    print(f"\n{device} x{gpus}, {meta['seconds']} s in all, work folder {work}\n")
    print("| phase | seconds | result | notes |\n|---|---:|---|---|")
    for name, row in rows.items():
        notes = ", ".join(f"{k}={v}" for k, v in row.items() if k in (
            "rounds", "engine", "peak_allocated_gib", "plan_gib", "plan_training_gib", "measured_over_plan", "killed"))
        print(f"| {name} | {row['seconds']} | {row['result']} | {notes} |")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": meta, "phases": rows}, indent=1))
        print(f"\nwritten to {out}")
    sys.exit(1 if any(row["result"].startswith("failed") for row in rows.values()) else 0)


if __name__ == "__main__":
    main()
