"""`trl_soft.engines` without starting an engine: the settings built from the config (their bad values are in the
table of tests/test_settings.py), the engine choice, stop rules, merged LoRA weights, server errors that need no
server, and the trainer announcing its choice before any weights load. The real engines: tests/test_engines_vllm.py."""

import logging
import socket
import sys
import types

import pytest
import torch

from trl_soft import SOFTTrainer
from trl_soft.engines import EngineChoice, EngineError, EngineUnavailable, ModelFacts, choose_engine, make_vllm_engine
from trl_soft.engines.base import StopRule, result_from_vllm, sampling_fields
from trl_soft.engines.settings import EngineSettings, resolve_dtype, smallest_lora_rank
from trl_soft.generation import GenerationSettings

from .conftest import make_tiny_llama, prompt_dataset, tiny_config


def test_config_builds_the_engine_settings_once(tmp_path):
    config = tiny_config(tmp_path / "out", generation_backend="vllm", vllm_mode="server", vllm_server_port=8123)
    assert config.settings.engine == EngineSettings(backend="vllm", vllm_mode="server", server_port=8123)


def _facts(**overrides):
    values = dict(path="/models/llama", architecture=None, kbit=False, lora_rank=None, on_cuda=False, local_vllm=True)
    values.update(overrides)
    return ModelFacts(**values)


def test_auto_falls_back_to_transformers_and_says_why():
    auto = EngineSettings()
    assert choose_engine(auto, _facts(local_vllm=False)).backend == "hf"
    assert "not installed" in choose_engine(auto, _facts(local_vllm=False)).reason
    assert "object" in choose_engine(auto, _facts(path=None)).reason
    assert "CPU build" in choose_engine(auto, _facts(kbit=True, lora_rank=16)).reason
    unknown = choose_engine(auto, _facts(architecture="NoSuchArchitectureForCausalLM"))
    assert unknown.backend == "hf" and "NoSuchArchitectureForCausalLM" in unknown.reason
    assert choose_engine(EngineSettings(backend="hf"), _facts()).backend == "hf"


def test_vllm_asked_for_where_it_cannot_run_is_an_error_naming_the_setting():
    for facts in (_facts(local_vllm=False), _facts(path=None), _facts(kbit=True, lora_rank=8)):
        with pytest.raises(EngineUnavailable, match="generation_backend='vllm'.*generation_backend='hf'"):
            choose_engine(EngineSettings(backend="vllm"), facts)


def test_vllm_choice_resolves_dtype_lora_mode_and_rank():
    choice = choose_engine(EngineSettings(), _facts(architecture="LlamaForCausalLM", lora_rank=16))
    assert (choice.backend, choice.mode, choice.lora_mode, choice.base) == ("vllm", "colocate", "merged", "/models/llama")
    assert choice.dtype == resolve_dtype("auto", on_cuda=False)
    assert "LlamaForCausalLM" in choice.describe()
    adapter = choose_engine(EngineSettings(lora_mode="adapter"), _facts(lora_rank=20))
    assert (adapter.lora_mode, adapter.max_lora_rank) == ("adapter", 32)
    full = choose_engine(EngineSettings(), _facts())
    assert full.lora_mode is None and "full weights" in full.describe()
    # a server somebody else runs needs no local vLLM
    remote = EngineSettings(vllm_mode="server", server_base_url="http://10.0.0.2:8000")
    assert choose_engine(remote, _facts(local_vllm=False)).backend == "vllm"
    assert smallest_lora_rank(513) is None and smallest_lora_rank(1) == 1


def test_adapter_rank_above_the_engine_limit_is_refused():
    with pytest.raises(EngineUnavailable, match=r"LoRA rank is 32, above `vllm_max_lora_rank`=16"):
        choose_engine(EngineSettings(lora_mode="adapter", max_lora_rank=16), _facts(lora_rank=32))
    with pytest.raises(EngineUnavailable, match="4-bit"):
        choose_engine(EngineSettings(lora_mode="merged"), _facts(kbit=True, lora_rank=8, on_cuda=True))


def test_engine_dtype_follows_the_hardware_unless_set():
    assert resolve_dtype("float32", on_cuda=False) == "float32"
    assert resolve_dtype("auto", on_cuda=False) in ("bfloat16", "float32")


def test_stop_rule_sends_special_tokens_as_ids_and_the_rest_as_text(tokenizer):
    rule = StopRule.build(tokenizer, ("<|im_end|>", "<|im_start|>", "### User:"))
    assert rule.token_ids[0] == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in rule.token_ids
    assert rule.strings == ("### User:",)
    # the token that ended an answer is not counted, as in the transformers engine; a stop string's tokens are
    ended = result_from_vllm("Paris.", [42, 43, tokenizer.eos_token_id], "stop", rule)
    assert (ended.num_tokens, ended.finished, ended.token_ids) == (2, True, (42, 43))
    cut = result_from_vllm("Paris", [42, 43, 44], "length", rule)
    assert (cut.num_tokens, cut.finished) == (3, False)


def test_sampling_fields_spell_everything_out():
    greedy = sampling_fields(GenerationSettings(temperature=0.0, top_p=0.5, max_new_tokens=7), StopRule((2,), ("x",)), 5)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and greedy["max_tokens"] == 7
    assert greedy["top_k"] == 0 and greedy["repetition_penalty"] == 1.0 and greedy["seed"] == 5
    assert greedy["stop_token_ids"] == [2] and greedy["stop"] == ["x"]


def test_merged_lora_weights_equal_peft_merge_and_unload(tokenizer):
    from peft import LoraConfig, get_peft_model

    from trl_soft.engines.weights import merged_state_dict

    model = make_tiny_llama(tokenizer)
    model.config.tie_word_embeddings = False
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    before = {n: p.clone() for n, p in peft_model.named_parameters()}
    merged = merged_state_dict(peft_model, torch.float32)
    assert all(torch.equal(before[n], p) for n, p in peft_model.named_parameters())  # the training model is untouched
    reference = peft_model.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], base_q)  # the adapter is in


def test_a_taken_port_is_refused_before_a_server_starts(tmp_path):
    from trl_soft.engines.server_process import ManagedVLLMServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = EngineSettings(vllm_mode="server", server_port=port)
        choice = EngineChoice("vllm", "test", "server", "float32", base="/nowhere")
        with pytest.raises(EngineError, match=rf"`vllm_server_port`: port {port} .* already in use"):
            ManagedVLLMServer(choice, settings, tmp_path / "log", 0)
    assert not (tmp_path / "log").exists()  # nothing was started


def test_a_server_url_that_does_not_answer_is_a_clear_error(tmp_path, tokenizer):
    from trl_soft.engines.ports import free_port

    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    settings = EngineSettings(vllm_mode="server", server_base_url=url)
    choice = EngineChoice("vllm", "test", "server", "float32", base="/base")
    with pytest.raises(EngineError, match=rf"`vllm_server_base_url`: no vLLM server answers at {url}"):
        make_vllm_engine(choice, settings, tokenizer, tmp_path, seed=0)


def test_a_script_without_a_main_guard_is_refused_before_vllm_starts(tmp_path, monkeypatch):
    from trl_soft.engines.vllm_local import check_main_guard

    script = tmp_path / "train.py"
    script.write_text("from trl_soft import SOFTTrainer\nSOFTTrainer(...).train()\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    fake_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    with pytest.raises(EngineError, match=r'if __name__ == "__main__":'):
        check_main_guard()
    script.write_text('if __name__ == "__main__":\n    pass\n')
    check_main_guard()


def test_a_lone_engine_on_a_small_cpu_runs_in_the_training_process(monkeypatch):
    """In process only where nothing else needs vLLM's own processes: not on CUDA, not one engine per rank, not on a
    CPU large enough to have several NUMA nodes, not where the user asked for vLLM's processes."""
    from trl_soft.engines.ranks import RankPlacement
    from trl_soft.engines.vllm_local import engine_environment, runs_in_process

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    rank = RankPlacement(process_index=0, local_process_index=0, num_processes=2, local_processes=2,
                         tensor_parallel_size=1, on_cuda=False)
    for cores, on_cuda, placement, expected in ((2, False, None, True), (8, False, None, True), (64, False, None, False),
                                                (2, True, None, False), (2, False, rank, False)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert runs_in_process(on_cuda, placement) is expected
    settings = EngineSettings()
    assert engine_environment(settings, False, in_process=True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_environment(settings, False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert not runs_in_process(False, None)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_environment(settings, False, in_process=True)


def test_the_trainer_announces_its_engine_before_loading_weights(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="trl_soft")
    trainer = SOFTTrainer(
        model=make_tiny_llama(tokenizer), args=tiny_config(tmp_path / "out", generation_backend="auto"),
        train_dataset=prompt_dataset(4), processing_class=tokenizer,
    )
    assert trainer.engine.choice.backend == "hf" and "object" in trainer.engine.choice.reason
    assert any(m.startswith("generation engine: transformers") for m in caplog.messages), caplog.messages
    with pytest.raises(ValueError, match="generation_backend='vllm'.*passed as an object"):
        SOFTTrainer(
            model=make_tiny_llama(tokenizer), args=tiny_config(tmp_path / "out2", generation_backend="vllm"),
            train_dataset=prompt_dataset(4), processing_class=tokenizer,
        )
