"""The engine's memory: which quantization a 4-bit base gets (read from the installed vLLM's registry), a
`max_model_len` sized to the run instead of the model's whole context (one real vLLM CPU engine), and sleep mode's
order of calls (a stand-in for `vllm.LLM`: sleep mode needs CUDA)."""

import os
from pathlib import Path

import pytest

from trl_soft import SOFTTrainer
from trl_soft.engines import EngineChoice, EngineSettings, EngineUnavailable, ModelFacts, choose_engine, vllm_installed
from trl_soft.engines.choice import MODEL_LEN_STEP, fit_max_model_len, vllm_quantization_methods
from trl_soft.engines.settings import GPU_SHARE, GPU_SHARE_SLEEPING

from .conftest import prompt_dataset, tiny_config

pytestmark = [
    pytest.mark.skipif(not vllm_installed() and not os.environ.get("CI"), reason="vLLM is not installed"),
]


def _qlora(**overrides) -> ModelFacts:
    """What the README's QLoRA command gives the choice on a CUDA machine (read without weights)."""
    values = dict(path="meta-llama/Llama-3.1-8B-Instruct", architecture="LlamaForCausalLM", kbit=True, lora_rank=16,
                  on_cuda=True, local_vllm=True)
    values.update(overrides)
    return ModelFacts(**values)


def test_a_4bit_base_on_cuda_is_served_as_the_installed_registry_allows():
    methods = vllm_quantization_methods()
    for backend in ("auto", "vllm"):
        choice = choose_engine(EngineSettings(backend=backend, dtype="bfloat16"), _qlora())
        assert (choice.backend, choice.lora_mode, choice.max_lora_rank) == ("vllm", "adapter", 16)
        if "bitsandbytes" in methods:
            assert choice.quantization == "bitsandbytes"
        else:  # vLLM 0.31: the base unquantized with each round's adapter, and the reason says so
            assert choice.quantization is None
            assert "no bitsandbytes loader" in choice.reason and "bfloat16" in choice.describe()
    unquantized = choose_engine(EngineSettings(dtype="bfloat16", quantization="none"), _qlora())
    assert unquantized.quantization is None and "vllm_quantization='none'" in unquantized.reason
    # a method the registry has is passed on (checked here without a GPU: the hardware check needs CUDA)
    fp8 = choose_engine(EngineSettings(quantization="fp8"), _qlora(on_cuda=False, kbit=False))
    assert "fp8" in methods and fp8.quantization == "fp8"


def test_a_quantization_the_registry_lacks_is_refused_naming_the_field():
    for name in ("int3", *(["bitsandbytes"] if "bitsandbytes" not in vllm_quantization_methods() else [])):
        for backend in ("auto", "vllm"):
            with pytest.raises(EngineUnavailable, match=rf"`vllm_quantization`='{name}' is not a quantization method"):
                choose_engine(EngineSettings(backend=backend, dtype="bfloat16", quantization=name), _qlora())
    # a 4-bit base on a CPU: vLLM's CPU build cannot load bitsandbytes, and 'vllm' insists
    with pytest.raises(EngineUnavailable, match="generation_backend='vllm'.*bitsandbytes"):
        choose_engine(EngineSettings(backend="vllm"), _qlora(on_cuda=False))


def test_the_engine_length_is_what_the_run_needs_never_the_whole_context():
    assert fit_max_model_len(700, 131072, None) == 768
    assert fit_max_model_len(MODEL_LEN_STEP, 131072, None) == MODEL_LEN_STEP
    assert fit_max_model_len(1900, 2048, None) == 2048  # capped by the model's context
    assert fit_max_model_len(700, None, None) == 768  # context unknown
    assert fit_max_model_len(700, 131072, 4096) == 4096  # set: taken as it is (the prompt check held it)
    assert fit_max_model_len(0, 131072, None) is None
    hf = EngineChoice("hf", "asked")
    assert hf.with_lengths(700, 2048, None) is hf


def test_the_gpu_share_is_larger_when_the_engine_sleeps():
    assert EngineSettings().gpu_share(sleeps=True) == GPU_SHARE_SLEEPING > EngineSettings().gpu_share(False) == GPU_SHARE
    assert EngineSettings(gpu_memory_utilization=0.7).gpu_share(sleeps=False) == 0.7
    choice = choose_engine(EngineSettings(dtype="bfloat16"), _qlora())
    assert choice.sleep_mode and choice.sleep_level == 1  # adapters: the base goes to CPU memory and comes back
    full = choose_engine(EngineSettings(dtype="bfloat16"), _qlora(kbit=False, lora_rank=None))
    assert full.sleep_mode and full.sleep_level == 2
    assert not choose_engine(EngineSettings(dtype="bfloat16", sleep_mode=False), _qlora()).sleep_mode
    assert not choose_engine(EngineSettings(), _qlora(kbit=False, on_cuda=False)).sleep_mode  # CPU: none
    assert not choose_engine(EngineSettings(vllm_mode="server", dtype="bfloat16"), _qlora()).sleep_mode


# ---- sleep mode's order of calls ----------------------------------------------------------------------------------
class _Output:
    def __init__(self):
        self.outputs = [type("Completion", (), {"text": "ok", "token_ids": [1, 2], "finish_reason": "length"})()]


class StandInLLM:
    """The smallest honest stand-in for `vllm.LLM`: records the calls the engine makes, generates nothing real. Sleep
    mode needs CUDA (vLLM's CPU platform has none), so this checks the order of calls; the real engine's sleeping is
    checked on a GPU (benchmarks/gpu_smoke.py)."""

    calls: list = []

    def __init__(self, **kwargs):
        StandInLLM.calls = [("init", kwargs)]

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", None))

    def collective_rpc(self, name, kwargs=None):
        self.calls.append((name, kwargs["weights_path"]))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache", None))

    def generate(self, inputs, params, lora_request=None, use_tqdm=None):
        self.calls.append(("generate", getattr(lora_request, "lora_path", None)))
        return [_Output() for _ in inputs]


def _session(tmp_path, tokenizer, monkeypatch, sleep_mode: bool, lora_mode: str | None):
    import vllm

    from trl_soft.engines import vllm_local
    from trl_soft.engines.session import EngineSession

    monkeypatch.setattr(vllm, "LLM", StandInLLM)
    monkeypatch.setattr(vllm_local, "sleep_mode_available", lambda: True)  # what CUDA's platform answers
    choice = EngineChoice("vllm", "test", mode="colocate", dtype="float32", lora_mode=lora_mode, max_lora_rank=8,
                          base=str(tmp_path / "base"), on_cuda=False, max_model_len=512, sleep_mode=sleep_mode)
    accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda m: m)})()
    return EngineSession(choice, EngineSettings(), tmp_path, 0, lambda: None, tokenizer, accelerator)


def _round_folder(tmp_path, index: int, adapter: bool) -> None:
    folder = tmp_path / f"round_{index}" / "model"
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter_config.json").write_text('{"r": 8}')


@pytest.mark.parametrize(("lora_mode", "level"), [("adapter", 1), (None, 2)])
def test_the_engine_sleeps_while_the_model_trains_and_wakes_to_generate(tmp_path, tokenizer, monkeypatch, lora_mode,
                                                                         level):
    from trl_soft.generation import GenerationSettings

    session = _session(tmp_path, tokenizer, monkeypatch, True, lora_mode)
    settings = GenerationSettings(max_new_tokens=4)
    session.sleep()  # before the engine has started: nothing to free
    session.generate(["Hello"], settings, "round 0")
    assert StandInLLM.calls[0][1]["enable_sleep_mode"] and StandInLLM.calls[0][1]["max_model_len"] == 512
    del StandInLLM.calls[:]
    session.sleep()  # round 1 trains
    session.sleep()  # asleep already: once
    _round_folder(tmp_path, 1, adapter=lora_mode == "adapter")
    session.use_round(1)
    session.generate(["Hello"], settings, "evaluate round 1")
    session.generate(["Hello"], settings, "round 2")  # awake: no second wake
    names = [c[0] for c in StandInLLM.calls]
    round_1 = str((tmp_path / "round_1" / "model").resolve())
    if level == 1:  # the adapter goes with each request; the base came back from CPU memory
        assert StandInLLM.calls[:2] == [("sleep", 1), ("wake_up", None)]
        assert names[2:] == ["generate", "generate"] and StandInLLM.calls[2][1] == round_1
    else:  # the weights were discarded: the round's are reloaded after waking, before generating
        assert StandInLLM.calls[:3] == [("sleep", 2), ("wake_up", None), ("reload_weights", round_1)]
        assert names[3:] == ["reset_prefix_cache", "generate", "generate"]
        # level 2 back on the starting model (a rejected round): the base is reloaded too, not assumed
        del StandInLLM.calls[:]
        session.sleep()
        session.use_start()
        session.generate(["Hello"], settings, "round 2")
        assert [c[0] for c in StandInLLM.calls][:3] == ["sleep", "wake_up", "reload_weights"]
        assert StandInLLM.calls[2][1] == str(tmp_path / "base")
    assert session.switch_seconds >= 0 and not session.asleep


def test_without_sleep_mode_the_engine_is_never_put_to_sleep(tmp_path, tokenizer, monkeypatch):
    """On a CPU (or with `vllm_sleep_mode=False`) the choice has `sleep_mode` off: no sleep or wake call is made."""
    from trl_soft.generation import GenerationSettings

    session = _session(tmp_path, tokenizer, monkeypatch, False, None)
    session.generate(["Hello"], GenerationSettings(max_new_tokens=4), "round 0")
    assert "enable_sleep_mode" not in StandInLLM.calls[0][1]
    session.sleep()
    session.generate(["Hello"], GenerationSettings(max_new_tokens=4), "round 1")
    assert [c[0] for c in StandInLLM.calls[1:]] == ["generate", "generate"]


def test_the_trainer_puts_the_engine_to_sleep_before_training(tmp_path, tokenizer, tiny_model, monkeypatch):
    """The order in a real (tiny, transformers-generated) run: each round generates, then the engine is put to sleep,
    then the model trains; the evaluation's generation comes after (and wakes the engine, above)."""
    from trl import SFTTrainer

    from trl_soft.engines.session import EngineSession

    events: list[str] = []
    real_sleep, real_generate, real_train = EngineSession.sleep, EngineSession.generate, SFTTrainer.train
    monkeypatch.setattr(EngineSession, "sleep", lambda self: (events.append("sleep"), real_sleep(self))[1])
    monkeypatch.setattr(EngineSession, "generate", lambda self, texts, s, desc: (
        events.append(f"generate {desc.split(':')[0].split('/')[0]}"), real_generate(self, texts, s, desc))[1])
    monkeypatch.setattr(SFTTrainer, "train", lambda self, **kw: (events.append("train"), real_train(self, **kw))[1])
    trainer = SOFTTrainer(model=tiny_model, args=tiny_config(tmp_path / "out", num_rounds=1),
                          train_dataset=prompt_dataset(4), processing_class=tokenizer)
    trainer.train()
    start = events.index("generate Round 1")
    assert events[start:start + 3] == ["generate Round 1", "sleep", "train"]
    assert events[start + 3:] and all(e.startswith("generate") for e in events[start + 3:])  # diagnostics


# ---- a real vLLM CPU engine on a model declaring a 131,072-token context --------------------------------------------
def test_a_long_context_model_starts_in_a_small_kv_cache_because_the_run_length_is_used(tmp_path, tokenizer):
    """A tiny random Llama declaring `max_position_embeddings=131072`, with KV rows wide enough that one 131,072-token
    sequence needs more than the 1 GiB CPU KV cache given (4 layers x 2 x 1024 values: 2 GiB in bfloat16): vLLM
    would refuse to start at the model's own length; sized to the run it starts and generates."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model_dir = Path(tmp_path / "long")
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = tiny_config(tmp_path / "out", generation_backend="vllm", vllm_cpu_kv_cache_gb=1, vllm_lora_mode="merged")
    trainer = SOFTTrainer(model=str(model_dir), args=args, train_dataset=prompt_dataset(4), processing_class=tokenizer)
    try:
        length = trainer.engine.choice.max_model_len
        assert length is not None and length % MODEL_LEN_STEP == 0 and length <= 4096
        results = trainer.engine.generate(["Tell me something useful."], trainer.sampling, "long context")
        assert len(results) == 1 and results[0].num_tokens > 0
    finally:
        trainer.engine.close()
        trainer.folder.release()
