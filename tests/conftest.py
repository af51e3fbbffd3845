"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded model) and tiny random Llamas built on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def smol_path() -> str:
    from trl_soft.models import embedded_model_path

    return str(embedded_model_path())


@pytest.fixture(scope="session")
def tokenizer(smol_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_path)


def make_tiny_llama(tokenizer, seed: int = 0):
    """A 2-layer, 64-wide random Llama over the real SmolLM2 vocabulary: trains in a second on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_llama(tokenizer)


def tiny_config(output_dir, **overrides):
    """A SOFTConfig sized for the tiny model: greedy, short answers, no filters, one quick epoch per round, generated
    by transformers (the vLLM engines have their own tests, tests/test_engines_vllm.py)."""
    from trl_soft import SOFTConfig

    values = dict(
        output_dir=str(output_dir),
        num_rounds=2,
        num_exemplars=2,
        generation_max_new_tokens=12,
        generation_temperature=0.0,
        generation_batch_size=4,
        filters=[],
        filter_min_words=1,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=5e-3,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        validation_batch_size=16,
        diagnostics_num_prompts=4,
        diagnostics_max_new_tokens=8,
        disable_tqdm=True,
        generation_backend="hf",
        behaviour_eval="none",  # on by default in a run; the behaviour tests turn it on with small sets
        behaviour_confirmation_share=0.0,  # their small sets whole; the held-out tests turn it on
    )
    values.update(overrides)
    return SOFTConfig(**values)


def prompt_dataset(n: int = 12, column: str = "prompt"):
    from datasets import Dataset

    return Dataset.from_list([{column: f"Tell me something useful about topic number {i}."} for i in range(n)])


# A model id that would fail loudly (and differently) if anything tried to load it.
UNLOADABLE = "trl-soft-tests/never-loaded"  # a hub id: passes the path check, fails offline if loaded


def unloaded_trainer(tmp_path, dataset=None, model=None, **overrides):
    """A `SOFTTrainer` on `UNLOADABLE` (or `model`): for the bad inputs that must be refused before a model is loaded
    or a token generated, naming the field and the fix. `overrides` go to `tiny_config`."""
    from trl_soft import SOFTTrainer

    return SOFTTrainer(
        model=model or UNLOADABLE,
        args=tiny_config(tmp_path / "out", **overrides),
        train_dataset=dataset if dataset is not None else prompt_dataset(12),
    )


# The offline benchmark copies: `$TRL_SOFT_DATA_DIR`, else `../shared/data` beside the checkout. CI always has them,
# so there a missing folder fails the tests that need it instead of skipping them.
DATA = Path(os.environ.get("TRL_SOFT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not DATA.is_dir() and not os.environ.get("CI"), reason=f"{DATA} (the offline benchmark copies) is absent"
)


# A process that takes the run lock on a folder and waits (`start_lock_holder`): kill it with SIGKILL to leave the
# stale lock record a `kill -9` leaves.
LOCK_HOLDER = """
import sys, time
from pathlib import Path
from trl_soft.run_folder import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_lock_holder(folder: Path) -> subprocess.Popen:
    """Another process holding the run lock on `folder` (created), once this returns."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process
