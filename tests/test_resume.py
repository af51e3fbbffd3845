"""Interrupted runs resume exactly: the randomness of every phase of a round comes from `seed + round`, a checkpoint
cut short is skipped, `train_loss` survives a checkpoint resume, checkpoints go once the round's model is saved,
changed settings are refused naming them, a full disk names the round, and SIGTERM / Ctrl-C stop at a safe point.

Interruptions here are exceptions raised from callbacks (what is on disk at that instant is what a kill leaves); the
kill -9 grid over every phase is `benchmarks/bench_resume.py`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import PreTrainedModel, TrainerCallback

from trl_soft import SOFTInterrupted, SOFTResumeError, SOFTSaveError, SOFTTrainer
from trl_soft.run_folder import CHECKPOINT_DONE
from trl_soft.state import SOFTState

from .conftest import make_tiny_llama, prompt_dataset, tiny_config

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama and the real tokenizer, saved: runs load it by path, like a user's model."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def loads(monkeypatch):
    """Every `from_pretrained` of a model (the real one still runs): proves a refusal came before any load."""
    calls = []
    real = PreTrainedModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(args[0] if args else kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    return calls


def _trainer(out, model_dir, lora=False, num_prompts=12, callbacks=None, **overrides):
    return SOFTTrainer(
        model=model_dir, args=tiny_config(out, **{"collapse_metric": "none", **overrides}), train_dataset=prompt_dataset(num_prompts),
        peft_config=LoraConfig(**LORA) if lora else None, callbacks=callbacks,
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class _Crash(TrainerCallback):
    """Raise (as a kill would stop the process) at a training event of one round."""

    def __init__(self, round_index, event="on_train_begin", step=None):
        self.round_index, self.event, self.step, self.round = round_index, event, step, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.round += 1
        self._maybe("on_train_begin", state)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe("on_step_end", state)

    def _maybe(self, event, state):
        if event == self.event and self.round == self.round_index and self.step in (None, state.global_step):
            raise KeyboardInterrupt(f"crash at {event} of round {self.round}")


@pytest.mark.parametrize("lora", [True, False], ids=["lora-dropout", "full"])
def test_a_resume_that_reuses_generations_trains_exactly_like_an_uninterrupted_run(tmp_path, model_dir, lora):
    """The round-2 generations are on disk when the crash comes, so the resume skips generation (and the seeding it
    did): fine-tuning must still see the same dropout masks and sample order."""
    settings = dict(lora=lora, curriculum="none")
    _trainer(tmp_path / "ref", model_dir, **settings).train()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "out", model_dir, callbacks=[_Crash(2)], **settings).train()
    assert (tmp_path / "out" / "round_2" / "generations.jsonl").is_file()
    _trainer(tmp_path / "out", model_dir, **settings).train(resume_from_checkpoint=True)
    for folder in ("round_1/model", "round_2/model", "final_model"):
        assert _same_weights(tmp_path / "ref" / folder, tmp_path / "out" / folder), folder
    ref, out = SOFTState.load(tmp_path / "ref"), SOFTState.load(tmp_path / "out")
    assert [h["validation_nll"] for h in out.history] == [h["validation_nll"] for h in ref.history]


def test_a_checkpoint_cut_short_is_skipped_and_train_loss_survives_the_resume(tmp_path, model_dir):
    """`save_strategy='steps'`: a kill while checkpoint-3 was written left it without its completion mark."""
    settings = dict(num_rounds=1, save_strategy="steps", save_steps=1)
    reference = _trainer(tmp_path / "ref", model_dir, keep_round_checkpoints=True, **settings)
    reference.train()
    kept = sorted(p.name for p in (tmp_path / "ref" / "round_1" / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "out", model_dir, callbacks=[_Crash(1, "on_step_end", step=3)], **settings).train()
    checkpoints = tmp_path / "out" / "round_1" / "checkpoints"
    assert (checkpoints / "checkpoint-2" / CHECKPOINT_DONE).is_file()
    half = checkpoints / "checkpoint-3"  # what the kill left: the weights, not the optimizer or the trainer state
    half.mkdir()
    shutil.copy(checkpoints / "checkpoint-2" / "model.safetensors", half / "model.safetensors")
    (half / "trainer_state.json").write_text('{"global_step": 3, "log_hi')

    _trainer(tmp_path / "out", model_dir, **settings).train(resume_from_checkpoint=True)
    ref, out = SOFTState.load(tmp_path / "ref").history[0], SOFTState.load(tmp_path / "out").history[0]
    assert out["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6) and out["train_loss"] > 0
    assert out["train_steps"] == ref["train_steps"] == 3
    assert _same_weights(tmp_path / "ref" / "round_1" / "model", tmp_path / "out" / "round_1" / "model")
    assert not checkpoints.exists()  # removed once the round's model was saved (unless keep_round_checkpoints)


def test_changed_settings_on_resume_are_refused_before_loading_and_more_rounds_extend_the_run(
    tmp_path, model_dir, loads
):
    out = tmp_path / "out"
    _trainer(out, model_dir, num_rounds=1, prompts_per_round=4).train()
    loads.clear()
    for change, message in [
        (dict(lora=True), r"`peft_config` null -> \{"),
        (dict(learning_rate=1e-4), r"`learning_rate` 0.005 -> 0.0001"),
        (dict(max_length=64), r"`max_length` 1024 -> 64"),
        (dict(per_device_train_batch_size=2, lr_scheduler_type="cosine"),
         r"`lr_scheduler_type` \"linear\" -> \"cosine\"; `per_device_train_batch_size` 4 -> 2"),
    ]:
        with pytest.raises(SOFTResumeError, match=message):
            _trainer(out, model_dir, num_rounds=1, prompts_per_round=4, resume_from_checkpoint=True, **change)
    with pytest.raises(SOFTResumeError, match="`num_rounds`: 1 -> 2 .* would give the completed rounds other prompts"):
        _trainer(out, model_dir, num_rounds=2, resume_from_checkpoint=True)  # 12 prompts split in 2, not 4 each
    assert loads == []
    _trainer(out, model_dir, num_rounds=2, prompts_per_round=4).train(resume_from_checkpoint=True)
    state = SOFTState.load(out)
    assert state.rounds_completed == 2 and state.num_rounds == 2 and state.final_round == 2


def test_a_weight_load_with_missing_keys_is_an_error(tmp_path, model_dir):
    trainer = _trainer(tmp_path / "out", model_dir, lora=True)
    with pytest.raises(SOFTResumeError, match="missing .*different model or PEFT setup"):
        trainer._load_from_checkpoint(model_dir)  # full weights into the LoRA-wrapped model


class _Signal(TrainerCallback):
    def __init__(self, signum, step):
        self.signum, self.step = signum, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_saves_a_checkpoint_at_the_end_of_the_step_and_the_resume_matches(tmp_path, model_dir):
    settings = dict(num_rounds=1)
    _trainer(tmp_path / "ref", model_dir, **settings).train()
    trainer = _trainer(tmp_path / "out", model_dir, callbacks=[_Signal(signal.SIGTERM, 1)], **settings)
    with pytest.raises(SOFTInterrupted, match=r"stopped by SIGTERM in round 1's training, at step 1.*--resume") as stop:
        trainer.train()
    assert stop.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
    assert (tmp_path / "out" / "round_1" / "checkpoints" / "checkpoint-1" / CHECKPOINT_DONE).is_file()
    _trainer(tmp_path / "out", model_dir, **settings).train(resume_from_checkpoint=True)
    assert _same_weights(tmp_path / "ref" / "final_model", tmp_path / "out" / "final_model")


CLI_FLAGS = [
    "--num_rounds", "2", "--num_exemplars", "2", "--generation_max_new_tokens", "12", "--generation_temperature", "0",
    "--filters", "too_short", "--filter_min_words", "1", "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--learning_rate", "5e-3",
    "--report_to", "none", "--save_strategy", "no", "--generation_backend", "hf", "--disable_tqdm", "true",
    "--diagnostics_num_prompts", "4", "--diagnostics_max_new_tokens", "8", "--gradient_checkpointing", "false",
    "--behaviour_eval", "none",
]


def _cli(model_dir, prompts, out, *extra):
    return [sys.executable, "-m", "trl_soft.cli", "train", "--model_name_or_path", model_dir, "--prompts_dataset",
            str(prompts), "--output_dir", str(out), *CLI_FLAGS, *extra]


def test_ctrl_c_on_the_command_line_ends_on_one_line_and_resume_finishes(tmp_path, model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about topic {i}."}) + "\n" for i in range(12)))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(_cli(model_dir, prompts, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env)
    deadline = time.time() + 300
    while not (out / "round_1" / "generations.jsonl").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("SOFT: stopped by SIGINT ")
    done = subprocess.run(_cli(model_dir, prompts, out, "--resume"), capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert SOFTState.load(out).rounds_completed == 2


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk would
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    from tests.conftest import prompt_dataset, tiny_config
    from trl_soft import SOFTTrainer, SOFTSaveError
    trainer = SOFTTrainer(model=sys.argv[1], args=tiny_config(sys.argv[2], num_rounds=1, collapse_metric="none"),
                          train_dataset=prompt_dataset(12))
    try:
        trainer.train()
    except SOFTSaveError as err:
        print(err)
        sys.exit(3)
    """
)


def test_a_full_disk_names_the_round_leaves_nothing_half_written_and_resume_finishes(tmp_path, model_dir):
    out = tmp_path / "out"
    limit = 4 * 1024 * 1024  # the tiny model's weights are ~25 MB; everything before them is far smaller
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] in (resource.RLIM_INFINITY, -1) or limit
    done = subprocess.run([sys.executable, "-c", FULL_DISK, model_dir, str(out), str(limit)], capture_output=True,
                          text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Round 1: saving its model" in done.stdout and "--resume" in done.stdout and "File too large" in done.stdout
    assert not (out / "round_1" / "model.partial").exists() and not (out / "round_1" / "model").exists()
    _trainer(out, model_dir, num_rounds=1).train(resume_from_checkpoint=True)
    assert SOFTState.load(out).rounds_completed == 1
    assert SOFTSaveError.__mro__[1] is OSError
