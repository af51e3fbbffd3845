"""The concerns' settings (`trl_soft.settings.ConcernSettings`, one per concern) and their union, `SOFTSettings`: the
one table of impossible values (every concern's, and the checks that need two concerns), each refused when the
`SOFTConfig` is built with an error naming the field; every `SOFTConfig` field belonging to a concern; the fingerprint
a resumed run is matched by; the metrics a configuration produces, and which way each is better."""

import ast
from collections import Counter
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from trl import SFTConfig

import trl_soft
from trl_soft import SOFTConfig
from trl_soft.behaviour.settings import BehaviourSettings
from trl_soft.config import CONCERNS
from trl_soft.generation import GenerationSettings
from trl_soft.settings import CONFIG, DECLARED, config_settings, config_type

from .conftest import tiny_config


def case(field, value, message, **others):
    """One impossible value: `field=value` (with `others` set too) must be refused naming `field`, matching `message`."""
    name = f"{field}={value!r}" + "".join(f",{k}={v!r}" for k, v in others.items())
    return pytest.param(field, value, message, others, id=name)


BAD_VALUES = [
    # types, checked against each concern's annotations before its own checks (a YAML config passes values as they are)
    case("num_rounds", 2.5, r"whole number \(int\); got 2.5 \(float\)"),
    case("num_rounds", [1, 2], r"whole number \(int\); got \[1, 2\] \(list\)"),
    case("num_exemplars", True, r"whole number \(int\); got True \(bool\)"),  # a bool is not a number
    case("prompts_per_round", "5", r"whole number \(int\) or None; got '5'"),
    case("generation_temperature", "0.7", r"number \(float\); got '0.7'"),
    case("use_internal_thoughts", "yes", r"true or false \(bool\); got 'yes'"),
    case("collapse_greater_is_better", 1, r"true or false \(bool\) or None; got 1 \(int\)"),
    case("principles_path", 3, r"string \(str\) or None; got 3"),
    case("filters", 3, r"list of strings or None; got 3 \(int\)"),
    case("generation_stop_strings", ["###", 7], r"list of strings or None; got \['###', 7\]"),
    # the SFTConfig values every round trains with
    case("learning_rate", -1e-4, "must be > 0"),
    case("learning_rate", "2e-4", r"number \(float\); got '2e-4'"),
    case("per_device_train_batch_size", 0, ">= 1"),
    case("bf16", [8, "none"], r"`bf16` must be .*; got \[8, 'none'\] \(list\)"),  # found by benchmarks/fuzz_inputs.py
    case("fp16", "yes", r"`fp16` must be .*; got 'yes' \(str\)"),
    case("gradient_accumulation_steps", 0, ">= 1"),
    case("num_train_epochs", 0, "train no step.*`max_steps` > 0"),
    case("num_train_epochs", -1.0, "train no step", max_steps=0),
    case("max_length", 0, "at least 16 tokens, or None"),
    case("max_length", 8, "at least 16 tokens, or None"),
    # rounds
    case("num_rounds", 0, "at least 1"),
    case("prompts_per_round", 0, "at least 1"),
    case("prompt_schedule", "sometimes", "one of 'disjoint', 'reuse'"),
    case("round_init", "random", "one of 'previous', 'base'"),
    case("round_data", "replace", "one of 'new', 'accumulate'"),
    case("round_replay_share", 0.0, "must be > 0"),
    case("aligned_prompt_share", 1.5, r"must be in \[0, 1\]"),
    case("aligned_retry_budget", -1, ">= 0"),
    case("aligned_retry_batch", 0, ">= 1"),
    case("aligned_retry_exemplars", 0, ">= 1"),
    case("aligned_retry_prompt", "mine", "one of 'same_kind', 'zero_shot', 'principled'"),
    case("filter_truncation", "keep", "one of 'cut', 'prefix', 'drop'"),
    case("behaviour_confirmation_share", 1.0, r"must be in \[0, 1\)"),
    # prompts
    case("exemplar_sampling", "diverse", "one of 'random', 'fixed'"),
    case("prompt_format", "xml", "one of 'auto', 'chat', 'plain'"),
    case("num_exemplars", -1, ">= 0"),
    case("engraving_shots", 2, "0 or 1"),
    # generation
    case("generation_max_new_tokens", 0, ">= 1"),
    case("generation_temperature", -0.5, ">= 0"),
    case("generation_top_p", 0.0, r"\(0, 1\]"),
    case("generation_batch_size", 0, ">= 1"),
    # engine
    case("generation_backend", "tensorrt", "one of 'auto', 'vllm', 'hf'"),
    case("vllm_mode", "remote", "one of 'colocate', 'server'"),
    case("vllm_dtype", "fp8", "one of 'auto', 'bfloat16'"),
    case("vllm_lora_mode", "fused", "one of 'auto', 'adapter', 'merged'"),
    case("vllm_max_lora_rank", 12, "ranks vLLM accepts"),
    case("vllm_server_base_url", "localhost:8000", "http"),
    case("vllm_server_port", 70000, "TCP port"),
    case("vllm_server_timeout", 0, "positive"),
    case("vllm_request_timeout", -1, "positive"),
    case("vllm_tensor_parallel_size", 0, ">= 1"),
    case("vllm_colocate_ranks", "every", "one of 'all', 'main'"),
    case("vllm_gpu_memory_utilization", 1.5, r"\(0, 1\]"),
    case("vllm_cpu_kv_cache_gb", 0, ">= 1"),
    case("vllm_max_model_len", 4, ">= 16"),
    case("vllm_gpu_memory_utilization", 0.0, r"\(0, 1\]"),
    case("vllm_quantization", "FP 8", r"'auto'.*'none'.*lower case"),
    case("vllm_quantization", "", r"a quantization method of the installed vLLM"),
    case("vllm_server_base_url", "https://user:s3cret@10.0.0.2:8000", r"credentials.*https://\*\*\*@10\.0\.0\.2:8000"),
    case("vllm_server_base_url", "http://10.0.0.2:8000,http://10.0.0.2:8000/", "names a server twice"),
    case("vllm_server_base_url", ["http://10.0.0.2:8000", "http://10.0.0.3:8000", "http://10.0.0.4:8000"],
         "3 servers for `prompts_per_round=2`", vllm_mode="server", prompts_per_round=2),
    case("vllm_server_host", "0.0.0.0", "other machines can reach.*`vllm_server_allow_remote=True`"),
    case("vllm_server_api_key_env", "MY KEY", "name of an environment variable"),
    case("vllm_server_base_url", "http://10.0.0.2:8000", r"plain http to 10\.0\.0\.2:8000.*\$MY_VLLM_KEY.*"
         "`vllm_server_allow_insecure_key=True`", vllm_mode="server", vllm_server_api_key_env="MY_VLLM_KEY"),
    case("vllm_server_devices", [1, 1], "distinct CUDA device indices"),
    case("vllm_server_devices", "0,x", r"list of whole numbers or None; got \['0,x'\]"),
    case("vllm_server_devices", [0], "at least that many", vllm_tensor_parallel_size=2),
    case("vllm_server_pass_env", ["PYTHON PATH"], "names of environment variables"),
    # filters
    case("filters", ["too_short", "profanity"], "unknown filter name.*'profanity'"),
    case("filter_min_words", 0, ">= 1"),
    case("principle_gate_values", [], "would mark no request", principle_gate_column="category"),
    case("filter_max_repeated_ngram_fraction", 0.0, r"\(0, 1\]"),
    case("filter_max_exemplar_overlap", 1.5, r"\(0, 1\]"),
    case("packing", True, "`filter_truncation='prefix'` cannot be combined", filter_truncation="prefix",
         curriculum="none"),
    # curriculum
    case("curriculum", "perplexityy", "one of 'none', 'length'"),
    case("curriculum_direction", "sideways", "one of 'ascending', 'descending'"),
    case("curriculum_bucket_size", 0, ">= 1"),
    case("curriculum_column", None, "`curriculum='column'` needs", curriculum="column"),
    case("curriculum_batch_size", 0, ">= 1"),
    case("packing", True, "`curriculum='length'` cannot be combined", curriculum="length"),
    # validation
    case("validation_batch_size", 0, ">= 1"),
    # benchmarks
    case("benchmarks", ["hhh", "mmlu"], "unknown name.*'mmlu'"),
    case("benchmark_limit", 0, ">= 1"),
    # diagnostics
    case("diagnostics_num_prompts", -1, ">= 0"),
    case("diagnostics_max_new_tokens", 0, ">= 1"),
    # judges
    case("behaviour_judge", "llm", "one of 'rules', 'hf', 'openai'"),
    case("pairwise_judge", "rules", "one of 'none', 'hf', 'openai'"),
    case("judge_model", None, "needed by the 'hf' judge", behaviour_judge="hf"),
    case("judge_model", "", "needed by the 'hf' judge", pairwise_judge="hf"),
    case("judge_model", "./no/such/model/folder", "not an existing folder", behaviour_judge="hf"),
    case("judge_base_url", None, "needed by the 'openai' judge", behaviour_judge="openai"),
    case("judge_base_url", "localhost:8000/v1", "http:// or https:// URL", pairwise_judge="openai"),
    case("judge_base_url", "ftp://example.org/v1", "http:// or https:// URL", behaviour_judge="openai"),
    case("judge_base_url", "http://", "http:// or https:// URL", behaviour_judge="openai"),
    case("judge_api_key_env", 5, r"must be a string \(str\) or None; got 5"),
    case("judge_api_key_env", "MY KEY", "must be the name of an environment variable"),
    # secrets (docs/security.md): no credentials in a URL, and a key only over https or to this machine
    case("judge_base_url", "https://user:s3cret@judge.example/v1", r"holds credentials in its URL \(https://\*\*\*@judge",
         behaviour_judge="openai"),
    case("judge_base_url", "http://10.0.0.2:8000/v1?key=abc", r"without a query.*key=\*\*\*", behaviour_judge="openai"),
    case("judge_base_url", "http://10.0.0.2:8000/v1", r"plain http to 10\.0\.0\.2:8000.*\$MY_KEY.*judge_allow_insecure_key",
         behaviour_judge="openai", judge_api_key_env="MY_KEY"),
    case("judge_timeout", 0, "positive number of seconds"),
    case("judge_timeout", -5.0, "positive number of seconds"),
    case("judge_timeout", "60", r"must be a number \(float\); got '60' \(str\)"),
    case("judge_max_retries", -1, "whole number >= 0"),
    case("judge_max_retries", 1.5, r"must be a whole number \(int\); got 1.5"),
    case("judge_batch_size", 0, "whole number >= 1"),
    case("judge_batch_size", True, r"must be a whole number \(int\); got True \(bool\)"),
    # behaviour
    case("behaviour_eval", ["harmfull"], "unknown set name.*'harmfull'"),
    case("behaviour_eval", ["helpful"], "needs a pairwise judge"),
    case("behaviour_harmful_limit", 1, ">= 2", behaviour_eval=["harmful"]),
    case("behaviour_limit", 0, ">= 1", behaviour_eval=["benign"]),
    case("behaviour_max_new_tokens", 0, ">= 1", behaviour_eval=["benign"]),
    case("require_premise", True, "needs the behaviour evaluation", behaviour_eval="none"),
    case("require_premise", True, "needs round 0 in `behaviour_fewshot`", behaviour_eval=["harmful"], behaviour_fewshot=[]),
    case("behaviour_fewshot", [0, 4], r"names round\(s\) \[4\] but the run has `num_rounds=3`"),
    case("behaviour_fewshot", [-1], "rounds are 0"),
    case("behaviour_fewshot", ["two"], r"list of round numbers"),
    case("behaviour_fewshot_every", -1, ">= 0"),
    case("behaviour_fewshot_limit", 0, ">= 1"),
    # acceptance
    case("behaviour_margin", -0.01, r"in \[0, 1\]"),
    case("behaviour_margin", 1.5, r"in \[0, 1\]"),
    case("behaviour_watch", ["refusal_harmfull"], "not behaviour verdict metrics"),
    case("behaviour_watch", ["admits_unknown"], "do not produce", behaviour_eval=["harmful"]),
    case("final_model", "best", "must be one of 'best_accepted', 'last'"),
    case("generate_from", "first", "must be one of 'last_accepted', 'last'"),
    case("rejection_patience", 0, ">= 1"),
    # best-of-n
    case("generations_per_prompt", 0, ">= 1"),
    case("generations_per_prompt", 4, "would be identical", generation_temperature=0.0),
    case("evaluate_start", False, "the premise check", behaviour_eval=["harmful"], require_premise=True),
    # collapse
    case("collapse_patience", 0, ">= 1"),
    case("collapse_threshold", -0.1, ">= 0"),
    case("collapse_noise_z", -1.0, ">= 0"),
    # a watched metric no round produces, one per kind of metric
    case("collapse_metric", "truthfulqa_mc1", "not produced.*benchmark metrics need `benchmarks`"),
    case("collapse_metric", "validation_nll", "not produced.*'validation_nll' needs a validation set",
         validation_path="none"),
    case("collapse_metric", "sample_entropy", "not produced.*'sample_\\*' need `diagnostics_num_prompts`",
         diagnostics_num_prompts=0),
    case("collapse_metric", "refusal_harmful", "not produced.*Behaviour metrics need `behaviour_eval`",
         behaviour_eval="none"),
]


@pytest.mark.parametrize(("field", "value", "message", "others"), BAD_VALUES)
def test_impossible_values_are_refused_naming_the_field(tmp_path, field, value, message, others):
    with pytest.raises(ValueError, match=message) as info:
        SOFTConfig(output_dir=str(tmp_path), report_to="none", **others, **{field: value})
    # named as `field`, or as `field=value` by the checks that need two fields
    assert f"`{field}`" in str(info.value) or f"`{field}=" in str(info.value), str(info.value)


def test_missing_deepspeed_config_is_refused_at_config_time(tmp_path):
    # The one bad value that is not a ValueError: a file that is not there.
    with pytest.raises(FileNotFoundError, match="`deepspeed`.*no-such-ds.json"):
        tiny_config(tmp_path / "out", deepspeed=str(tmp_path / "no-such-ds.json"))


# ---- every field belongs to a concern, and to the fingerprint unless it is declared not to -----------------------
OWN_FIELDS = sorted({f.name for f in fields(SOFTConfig)} - {f.name for f in fields(SFTConfig)})
NOT_FINGERPRINTED = {
    concern.CONFIG_FIELDS.get(attr, attr) for concern in CONCERNS.values() for attr in concern.NOT_FINGERPRINTED
}


def test_every_field_soft_config_adds_belongs_to_a_concern():
    named = {name for concern in CONCERNS.values() for name in concern.CONFIG_FIELDS.values()}
    assert set(OWN_FIELDS) - named == set(), "declare these fields in a concern, with `setting`"
    assert named <= {f.name for f in fields(SOFTConfig)}, "CONFIG_FIELDS names a field SOFTConfig lacks"
    assert {"vllm_server_port", "judge_timeout", "generation_batch_size"} <= NOT_FINGERPRINTED


# ---- each setting declared once: in its concern, with `setting(...)`; SOFTConfig's fields are generated from it -------
PACKAGE = Path(trl_soft.__file__).parent
# Attributes that share a SOFTConfig field's name but are not that setting: `trl-soft eval --benchmarks` (another
# command's argument; it scores all three by default, a run none) and whether a pairwise judge is configured (passed
# to `BehaviourSettings.from_config`, a bool, not the `pairwise_judge` setting).
OTHER_ATTRIBUTES = {("scripts/evaluate.py", "benchmarks"), ("behaviour/settings.py", "pairwise_judge")}


def _declarations() -> list[tuple[str, str, str]]:
    """(SOFTConfig field, 'setting' or 'read_from' or 'default', where) for every class attribute in the package's
    source whose SOFTConfig name is one of SOFTConfig's own fields, and every hand-written `CONFIG_FIELDS`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                written = isinstance(node.value, ast.Dict)  # (ConcernSettings derives it: `_ConfigFields()`)
                if written and any(isinstance(t, ast.Name) and t.id == "CONFIG_FIELDS" for t in targets):
                    found.append(("CONFIG_FIELDS", "mapping", f"{where}:{node.lineno}"))
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
                continue
            call = node.value if isinstance(node.value, ast.Call) else None
            kind = getattr(call.func, "id", None) if call else None
            if kind == "setting":
                name = next((k.value.value for k in call.keywords if k.arg == "name"), node.target.id)
                found.append((name, "setting", f"{where}:{node.lineno}"))
            elif kind == "read_from":
                found.append((call.args[0].value, "read_from", f"{where}:{node.lineno}"))
            elif node.target.id in OWN_FIELDS and (where, node.target.id) not in OTHER_ATTRIBUTES:
                found.append((node.target.id, "default", f"{where}:{node.lineno}"))
    return found


def test_each_setting_is_declared_once_in_the_source():
    found = _declarations()
    declared = Counter(name for name, kind, _ in found if kind == "setting")
    assert sorted(declared) == OWN_FIELDS, "every SOFTConfig field comes from one `setting(...)` in a concern"
    assert {name for name, count in declared.items() if count > 1} == set(), "a setting declared twice"
    elsewhere = [(name, where) for name, kind, where in found if kind in ("default", "mapping")]
    assert elsewhere == [], "a default (or the mapping to SOFTConfig) written outside the setting's declaration"
    read = {name for name, kind, _ in found if kind == "read_from"}
    assert read <= set(declared) | {f.name for f in fields(SFTConfig)}
    config_class = next(node for node in ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8")).body
                        if isinstance(node, ast.ClassDef) and node.name == "SOFTConfig")
    assert not [n for n in config_class.body if isinstance(n, ast.AnnAssign)], "SOFTConfig declares no field itself"


def test_soft_config_fields_are_the_concerns_settings_by_construction(tmp_path):
    own = {f.name: f for f in fields(SOFTConfig) if f.name in OWN_FIELDS}
    for concern in CONCERNS.values():
        for entry in config_settings(concern):
            f = own.pop(entry.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            assert (SOFTConfig.__annotations__[f.name], default, f.metadata["help"]) == (entry.type, entry.value, entry.help)
            assert entry.help, f"`{entry.name}` has no help"
    assert own == {}
    # what a concern reads from a field declared elsewhere has that field's default
    defaults = {f.name: f.default for f in fields(SOFTConfig) if f.default is not MISSING}
    for concern in CONCERNS.values():
        for f in fields(concern):
            if CONFIG in f.metadata and not f.metadata[DECLARED]:
                assert f.default == defaults[f.metadata[CONFIG]], (concern.__name__, f.name)
    # and a concern built without a config is the one a default SOFTConfig builds
    built = SOFTConfig(output_dir=str(tmp_path), report_to="none").settings.concerns()
    assert {name: concern() for name, concern in CONCERNS.items()} == built


def test_config_fields_are_derived_from_the_settings():
    from trl_soft.rounds import RoundSettings

    assert RoundSettings.CONFIG_FIELDS["data"] == "round_data"  # named by its setting
    assert RoundSettings.CONFIG_FIELDS["num_rounds"] == "num_rounds"  # the attribute's own name
    assert GenerationSettings.CONFIG_FIELDS["seed"] == "seed"  # read from SFTConfig's field
    assert "pairwise_judge" not in BehaviourSettings.CONFIG_FIELDS  # passed to `from_config`, not a setting
    assert config_type(tuple[str, ...], None) == list[str] | None
    assert config_type(tuple[int, ...], ()) == list[int]
    assert config_type(int | None, None) == int | None


# A valid value other than the default, for the fields whose default does not say what else is valid (choices,
# paths, lists, None); numbers move a little and booleans flip. NEEDS: what that value needs, set on both sides.
OTHER_VALUE = {
    "final_interpolation": 0.5,
    "aligned_prompt_values": ["harmful"],
    "aligned_retry_prompt": "zero_shot",
    "aligned_retry_exemplars": 3,
    "filter_truncation": "drop",
    "round_data": "new",
    "round_replay_share": 0.5,
    "prompts_per_round": 5,
    "prompt_schedule": "reuse",
    "prompt_column": "question",
    "round_init": "base",
    "principles_path": "my_principles.json",
    "exemplars_path": "my_exemplars.jsonl",
    "exemplar_sampling": "fixed",
    "prompt_format": "plain",
    "generation_stop_strings": ["###"],
    "generation_backend": "hf",
    "vllm_mode": "server",
    "vllm_dtype": "float32",
    "vllm_lora_mode": "merged",
    "vllm_max_lora_rank": 16,
    "vllm_server_base_url": ["http://10.0.0.2:8000", "http://10.0.0.3:8000"],
    "vllm_server_host": "127.0.0.1",
    "vllm_server_api_key_env": "MY_VLLM_KEY",
    "vllm_server_devices": [1],
    "vllm_server_pass_env": ["PYTHONPATH"],
    "vllm_server_port": 8123,
    "vllm_max_model_len": 2048,
    "vllm_gpu_memory_utilization": 0.5,
    "vllm_quantization": "none",
    "vllm_colocate_ranks": "main",
    "vllm_enforce_eager": True,
    "filters": ["too_short"],
    "principle_gate_column": "category",
    "principle_gate_values": ["unsafe"],
    "curriculum": "heuristic",
    "curriculum_direction": "descending",
    "curriculum_bucket_size": 4,
    "curriculum_column": "level",
    "collapse_metric": "train_loss",
    "collapse_greater_is_better": True,
    "validation_path": "none",
    "benchmarks": ["hhh"],
    "benchmark_data_dir": "/data/elsewhere",
    "benchmark_limit": 10,
    "behaviour_eval": ["benign"],
    "behaviour_fewshot": [0, 1],
    "behaviour_fewshot_limit": 50,
    "behaviour_watch": ["refusal_benign"],
    "final_model": "last",
    "generate_from": "last",
    "principle_gate_honesty_values": ["private"],
    "behaviour_harmful_limit": 100,
    "collapse_threshold": 0.02,
    "behaviour_limit": 10,
    "behaviour_benign_path": "benign.jsonl",
    "behaviour_unknowable_path": "unknowable.jsonl",
    "behaviour_judge": "openai",
    "pairwise_judge": "openai",
    "judge_model": "org/judge",
    "judge_base_url": "http://127.0.0.1:8000/v1",
    "judge_api_key_env": "MY_KEY",
}
NEEDS = {
    "behaviour_judge": {"judge_base_url": "http://127.0.0.1:8000/v1"},
    "pairwise_judge": {"judge_base_url": "http://127.0.0.1:8000/v1"},
    "require_premise": {"behaviour_eval": ["harmful"]},
}


def other_value(field, default):
    if field in OTHER_VALUE:
        return OTHER_VALUE[field]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default + 0.05
    raise AssertionError(f"add a valid non-default value of `{field}` (default {default!r}) to OTHER_VALUE")


@pytest.mark.parametrize(
    ("field", "fingerprinted"), [pytest.param(f, f not in NOT_FINGERPRINTED, id=f) for f in OWN_FIELDS]
)
def test_a_field_changes_the_fingerprint_exactly_when_it_is_fingerprinted(tmp_path, field, fingerprinted):
    base = SOFTConfig(output_dir=str(tmp_path), report_to="none", **NEEDS.get(field, {}))
    value = other_value(field, getattr(base, field))
    changed = SOFTConfig(output_dir=str(tmp_path), report_to="none", **NEEDS.get(field, {}), **{field: value})
    assert (field in base.settings.fingerprint()) is fingerprinted
    assert (changed.settings.fingerprint() != base.settings.fingerprint()) is fingerprinted


# ---- the metrics a configuration produces, and their directions ---------------------------------------------------
@pytest.mark.parametrize("validation_path", [None, "none"])
def test_metric_names_are_the_concerns_and_the_diagnostics_only_with_a_validation_set(tmp_path, validation_path):
    settings = SOFTConfig(
        output_dir=str(tmp_path), report_to="none", validation_path=validation_path,
        benchmarks=["truthfulqa_mc1", "hhh"], behaviour_eval=["harmful", "benign"],
    ).settings
    concerns = settings.concerns()
    diagnostics = concerns.pop("diagnostics").metric_names()
    others = set().union(*(concern.metric_names() for concern in concerns.values()))
    assert diagnostics and {"truthfulqa_mc1", "hhh_overall", "refusal_harmful", "train_loss"} <= others
    assert settings.metric_names() == (others | diagnostics if validation_path is None else others)
    assert ("validation_nll" in settings.metric_names()) is (validation_path is None)


@pytest.mark.parametrize(
    ("metric", "greater_is_better", "producing"),
    [
        ("validation_nll", False, {}),
        ("sample_self_bleu", False, {}),
        ("train_loss", False, {}),
        ("refusal_benign", False, {"behaviour_eval": ["benign"]}),
        ("fewshot_refusal_benign", False, {"behaviour_eval": ["benign"], "behaviour_fewshot_every": 1}),
        ("truthfulqa_mc1", True, {"benchmarks": ["truthfulqa_mc1"]}),
        ("hhh_overall", True, {"benchmarks": ["hhh"]}),
        ("refusal_harmful", True, {"behaviour_eval": ["harmful"]}),
        ("alignment_score", True, {"behaviour_eval": ["harmful"]}),
    ],
)
def test_the_watched_metric_knows_which_way_is_better(tmp_path, metric, greater_is_better, producing):
    settings = SOFTConfig(output_dir=str(tmp_path), report_to="none", collapse_metric=metric, **producing).settings
    assert settings.collapse_metric == metric
    assert settings.collapse_greater_is_better is greater_is_better
