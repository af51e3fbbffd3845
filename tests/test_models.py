"""The small helpers of `trl_soft.models` that the model-running modules share (loading itself: test_embedded_model)."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from trl_soft.models import adapter_base_model, ensure_pad_token, eval_mode, pad_id


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
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "embedded"}))
    assert adapter_base_model(str(tmp_path)) == "embedded"
