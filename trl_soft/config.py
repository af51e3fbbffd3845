"""`SOFTConfig`: every knob of Step-On-Feet Tuning, on top of TRL's `SFTConfig`.

The fine-tuning part of each round is ordinary SFT, so every `SFTConfig` / `TrainingArguments` field keeps its meaning
and applies to each round's training. The fields added here control what happens around it: which prompts a round
answers, how the generation prompt is built, how the self-generated answers are filtered and ordered, and how the
rounds are chained.

Defaults follow the SOFT paper (arXiv 2402.07610) and Self-Align (arXiv 2305.03047) where they say something; where
they are silent, the help text says "chosen here" and why.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field, fields

import torch
from trl import SFTConfig

from .acceptance import DEFAULT_MARGIN, AcceptanceSettings
from .aligned import AlignedSettings
from .behaviour.settings import BEHAVIOUR_MAX_NEW_TOKENS, BehaviourSettings
from .callbacks import CollapseSettings
from .curriculum import CurriculumSettings
from .engines.settings import EngineSettings
from .evaluation.benchmarks import BenchmarkSettings
from .evaluation.diagnostics import DiagnosticsSettings
from .evaluation.validation import VALIDATION_METRIC, ValidationSettings
from .filters import FILTER_NAMES, FilterSettings
from .generation import GenerationSettings
from .judges.settings import JudgeSettings
from .prompting import PromptSettings
from .rounds import RoundSettings
from .security import redact_secrets, redact_text, redact_url, url_credentials_error
from .settings import ConcernSettings, matches, type_error

# Every concern's settings class, in the order they are built and checked: the one list of concerns.
CONCERNS: dict[str, type[ConcernSettings]] = {
    "rounds": RoundSettings,
    "prompts": PromptSettings,
    "generation": GenerationSettings,
    "engine": EngineSettings,
    "filters": FilterSettings,
    "aligned": AlignedSettings,
    "curriculum": CurriculumSettings,
    "validation": ValidationSettings,
    "benchmarks": BenchmarkSettings,
    "diagnostics": DiagnosticsSettings,
    "judges": JudgeSettings,
    "behaviour": BehaviourSettings,
    "acceptance": AcceptanceSettings,
    "collapse": CollapseSettings,
}
# The `SFTConfig` fields that shape every round's weights besides the SOFT ones (part of the resume fingerprint).
TRAINING_FIELDS = (
    "seed", "data_seed", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "optim", "optim_args", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "label_smoothing_factor",
    "max_length", "packing", "packing_strategy", "padding_free", "truncation_mode", "completion_only_loss",
    "assistant_only_loss", "loss_type", "neftune_noise_alpha", "bf16", "fp16", "model_init_kwargs",
    "chat_template_path", "use_liger_kernel",
)

# The types of the `SFTConfig` fields `SOFTSettings.check` checks (a YAML config passes values unconverted).
TRAINING_TYPES = {
    "learning_rate": float, "num_train_epochs": float, "max_steps": int, "per_device_train_batch_size": int,
    "gradient_accumulation_steps": int, "max_length": int | None, "bf16": bool | None, "fp16": bool,
}
MIN_MAX_LENGTH = 16  # tokens: below this no chat-formatted prompt and answer fit (the vLLM `max_model_len` floor too)
# SOFTConfig's lists of names (no name holds a comma): a string "a,b" is split, as `trl-soft eval --benchmarks` does.
NAME_LISTS = ("filters", "benchmarks", "behaviour_eval", "vllm_server_base_url", "vllm_server_pass_env")


@dataclass(frozen=True)
class SOFTSettings:
    """Every concern's settings, built once from a `SOFTConfig` (`config.settings`), plus what needs several of them:
    the metrics a round produces, the metric the collapse callback watches, and the run's fingerprint."""

    rounds: RoundSettings
    prompts: PromptSettings
    generation: GenerationSettings
    engine: EngineSettings
    filters: FilterSettings
    aligned: AlignedSettings
    curriculum: CurriculumSettings
    validation: ValidationSettings
    benchmarks: BenchmarkSettings
    diagnostics: DiagnosticsSettings
    judges: JudgeSettings
    behaviour: BehaviourSettings
    acceptance: AcceptanceSettings
    collapse: CollapseSettings
    training: tuple[tuple[str, object], ...] = ()  # TRAINING_FIELDS and their values

    @classmethod
    def from_config(cls, config: SOFTConfig) -> SOFTSettings:
        concerns = {name: concern.from_config(config) for name, concern in CONCERNS.items()}
        return cls(**concerns, training=tuple((name, _redacted(getattr(config, name))) for name in TRAINING_FIELDS))

    def concerns(self) -> dict[str, ConcernSettings]:
        return {name: getattr(self, name) for name in CONCERNS}

    def metric_names(self) -> set[str]:
        """Every per-round metric this configuration produces (what `collapse_metric` may watch)."""
        names: set[str] = set()
        for name, concern in self.concerns().items():
            if name == "diagnostics" and not self.validation.enabled:
                continue  # the diagnostics answer validation prompts
            if name == "acceptance" and not self.behaviour.enabled:
                continue  # a round is accepted on its behaviour items
            names |= concern.metric_names()
        return names

    @property
    def collapse_metric(self) -> str | None:
        """The metric the EarlyCollapseCallback watches, or None when early stopping is off."""
        return self.collapse.watched(VALIDATION_METRIC if self.validation.enabled else None)

    def greater_is_better(self, metric: str) -> bool:
        """A metric's direction, from the concern that produces it; higher is better unless one says otherwise."""
        for concern in self.concerns().values():
            direction = concern.metric_direction(metric)
            if direction is not None:
                return direction
        return True

    @property
    def collapse_greater_is_better(self) -> bool:
        if self.collapse.greater_is_better is not None:
            return self.collapse.greater_is_better
        return self.greater_is_better(self.collapse_metric or "")

    def fingerprint(self) -> dict[str, object]:
        """What defines a run's data and weights, by `SOFTConfig` field: hashed into the manifest for resume safety.
        Derived from the settings objects, so a field added to a concern is covered without a list to update."""
        values: dict[str, object] = dict(self.training)
        for concern in self.concerns().values():
            values.update(concern.fingerprint())
        return values

    def check(self, config: SOFTConfig) -> None:
        """The checks that need more than one concern (or an `SFTConfig` field)."""
        if not self.validation.evaluate_start and (self.behaviour.require_premise or "helpful" in (self.behaviour.sets or ())):
            raise ValueError(
                "`require_premise` and `behaviour_eval` 'helpful' need `evaluate_start=True`: the premise check and "
                "the win rate's reference answers come from evaluating the starting model before round 1."
            )
        late = [r for r in self.behaviour.fewshot if r > self.rounds.num_rounds]
        if late:
            raise ValueError(
                f"`behaviour_fewshot` names round(s) {late} but the run has `num_rounds={self.rounds.num_rounds}`: give "
                "rounds from 0 (the starting model, the premise check) to num_rounds."
            )
        servers, per_round = len(self.engine.server_base_url), self.rounds.prompts_per_round
        if self.engine.external_server and per_round is not None and servers > per_round:
            raise ValueError(
                f"`vllm_server_base_url` names {servers} servers for `prompts_per_round={per_round}`: each server "
                "answers a contiguous slice of a round's prompts, so some would get none. Give at most "
                f"{per_round} servers, or more prompts per round."
            )
        measured = self.behaviour.base_metrics()
        unmeasured = [m for m in self.acceptance.watch or () if m not in measured]
        if unmeasured and self.behaviour.sets is not None:
            raise ValueError(
                f"`behaviour_watch` names {unmeasured}, which the behaviour sets of this run "
                f"({list(self.behaviour.sets) or 'none'}) do not produce: add their set to `behaviour_eval` or drop them."
            )
        metric = self.collapse.metric
        if metric not in (None, "none") and metric not in self.metric_names():
            raise ValueError(
                f"`collapse_metric={metric!r}` is not produced by any round with this configuration; "
                f"the rounds produce {sorted(self.metric_names())}. (Behaviour metrics need `behaviour_eval`, "
                "benchmark metrics need `benchmarks`, "
                "'validation_nll' needs a validation set, 'sample_*' need `diagnostics_num_prompts` > 0; a metric "
                "added by your own SOFTCallback is monitored by passing `EarlyCollapseCallback(metric=...)` yourself.)"
            )
        if self.curriculum.on and config.packing:
            raise ValueError(
                f"`curriculum={self.curriculum.name!r}` cannot be combined with `packing=True`: packing regroups the "
                "examples and destroys the easy-to-hard order. Set `packing=False` or `curriculum='none'`."
            )
        if isinstance(config.deepspeed, str) and not config.deepspeed.lstrip().startswith("{"):
            if not os.path.isfile(config.deepspeed):
                raise FileNotFoundError(
                    f"`deepspeed`: no DeepSpeed config file at {config.deepspeed!r}. Give the path of a DeepSpeed JSON, "
                    "or drop `--deepspeed` and launch with `accelerate launch --config_file "
                    "examples/accelerate_configs/deepspeed_zero3.yaml ...`."
                )
        check_training(config)
        if self.curriculum.on and config.shuffle_dataset:
            warnings.warn(
                "`shuffle_dataset=True` is ignored while a curriculum is on: the curriculum sets the order.",
                stacklevel=4,
            )


# The URL fields whose service takes a key, and the field that names the key's environment variable.
KEY_VARIABLE_FIELDS = {"judge_base_url": "judge_api_key_env", "vllm_server_base_url": "vllm_server_api_key_env"}


def _redacted(value: object) -> object:
    """A config value as it may be stored: URLs (alone or in a list) redacted, secrets in dicts blanked at any depth
    (`model_init_kwargs={"token": ...}`), anything else unchanged."""
    if isinstance(value, dict):
        return redact_secrets(value)
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) and "://" in v for v in value):
        return type(value)(_redacted(v) for v in value)
    return value


def _redacted_settings(settings: SOFTSettings | None) -> SOFTSettings | None:
    """`settings` with every URL attribute of its concerns redacted (a copy, only where one changes; the concerns were
    checked when built, so this changes nothing unless a URL was set afterwards)."""
    if not isinstance(settings, SOFTSettings):
        return settings
    changed = {}
    for name, concern in settings.concerns().items():
        values = {f.name: _redacted(getattr(concern, f.name)) for f in fields(concern)}
        if any(values[k] != getattr(concern, k) for k in values):
            clone = copy.copy(concern)
            for key, value in values.items():
                object.__setattr__(clone, key, value)  # frozen, and `replace` would check the redacted URL again
            changed[name] = clone
    if not changed:
        return settings
    clone = copy.copy(settings)
    for name, concern in changed.items():
        object.__setattr__(clone, name, concern)
    return clone


def check_training(config: SOFTConfig) -> None:
    """The `SFTConfig` values every round's fine-tuning runs with: each round must train at least one step, on
    examples long enough to hold a prompt and its answer."""
    for name, expected in TRAINING_TYPES.items():
        if not matches(getattr(config, name), expected):
            raise type_error(name, getattr(config, name), expected)
    if config.learning_rate <= 0:
        raise ValueError(
            f"`learning_rate` must be > 0: it is the step size of every round's fine-tuning; got {config.learning_rate}. "
            "Use e.g. 2e-5 for full fine-tuning or 2e-4 with LoRA."
        )
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"`{name}` must be >= 1; got {getattr(config, name)}.")
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        raise ValueError(
            f"`num_train_epochs`={config.num_train_epochs} with `max_steps`={config.max_steps}: every round would "
            "generate its data and then train no step. Set `num_train_epochs` > 0 (e.g. 1), or `max_steps` > 0."
        )
    if config.max_length is not None and config.max_length < MIN_MAX_LENGTH:
        raise ValueError(
            f"`max_length` must be at least {MIN_MAX_LENGTH} tokens, or None for no truncation; got {config.max_length}. "
            "It caps every training example: the prompt (in its chat template) and the answer together."
        )


@dataclass
class SOFTConfig(SFTConfig):
    r"""
    Configuration class for [`SOFTTrainer`]: `SFTConfig` plus the round loop of Step-On-Feet Tuning.

    Each round t answers a chunk of prompts few-shot with the model of round t-1 (principles + k exemplars sampled per
    prompt), filters the answers, orders them easy to hard, fine-tunes on (prompt, answer) without principles or
    exemplars, and scores a held-out validation set. All `SFTConfig` fields apply to the fine-tuning of every round.

    Difference from `SFTConfig` defaults: `bf16` defaults to `True` only when a CUDA device is present; on CPU it
    defaults to `False` (float32), because CPUs without native bf16 train about 12x slower in it.
    """

    # ---- Rounds and prompts -------------------------------------------------------------------------------------
    num_rounds: int = field(
        default=3,
        metadata={"help": "Number of bootstrapping rounds T (regenerate -> filter -> order -> fine-tune -> validate)."},
    )
    prompts_per_round: int | None = field(
        default=None,
        metadata={
            "help": "Prompts answered per round. Default: the prompt set divided evenly among the rounds "
            "(the paper splits its prompt pool into one fresh chunk per round)."
        },
    )
    prompt_schedule: str = field(
        default="disjoint",
        metadata={
            "help": "How rounds take prompts: 'disjoint' (default, as in the paper: each round a fresh chunk that no "
            "other round sees) or 'reuse' (every round answers the same prompts again)."
        },
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column of the prompt dataset that holds the user prompt text."}
    )
    round_init: str = field(
        default="previous",
        metadata={
            "help": "Weights each round's fine-tuning starts from: 'previous' (default, the paper: round t continues "
            "from round t-1) or 'base' (restart from the initial weights; data still comes from round t-1's model)."
        },
    )
    round_data: str = field(
        default="new",
        metadata={
            "help": "What each round trains on: 'new' (its own kept answers, the paper) or 'accumulate' (also the "
            "kept answers of every earlier accepted round, as they were generated: accumulating data bounds collapse, "
            "Gerstgrasser et al. 2024; with `round_init='base'` this is ReST-EM)."
        },
    )
    allow_eval_overlap: bool = field(
        default=False,
        metadata={
            "help": "Train on prompts that are also evaluation items (behaviour sets, benchmarks). By default a run "
            "whose prompts contain one (same text, or most of its word 8-grams) is refused before any model loads, "
            "naming them."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow starting over in an `output_dir` that already holds a run (everything the run wrote is "
            "removed: rounds, final model, summary, manifest). Without it, an existing run must be continued with "
            "`resume_from_checkpoint`/`--resume`."
        },
    )
    keep_round_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep each round's Trainer checkpoints (`round_{t}/checkpoints/`, written with `save_strategy`) "
            "after the round's model is saved. By default they are removed then: resume needs only the round's model."
        },
    )

    # ---- Principles and exemplars ---------------------------------------------------------------------------------
    principles_path: str | None = field(
        default=None,
        metadata={
            "help": "JSON file of principles ({'preamble': str, 'principles': [{'name', 'text'}]}). Default: the 14 "
            "principles shipped in trl_soft/assets/principles.json."
        },
    )
    exemplars_path: str | None = field(
        default=None,
        metadata={
            "help": "JSONL exemplar pool, one {'id', 'prompt', 'response'[, 'internal_thoughts', 'category']} a line. "
            "Default: the 32 exemplars shipped in trl_soft/assets/exemplars.jsonl."
        },
    )
    num_exemplars: int = field(
        default=5,
        metadata={
            "help": "In-context exemplars per generation prompt (k). Default 5 as in Self-Align; use fewer for small "
            "context windows or CPU runs."
        },
    )
    exemplar_sampling: str = field(
        default="random",
        metadata={
            "help": "'random' (default, SOFT: k exemplars drawn afresh for every prompt, the diversity the paper "
            "finds essential) or 'fixed' (the same k exemplars for every prompt: the single-round Self-Align "
            "baseline)."
        },
    )
    use_internal_thoughts: bool = field(
        default=False,
        metadata={
            "help": "Show the exemplars' 'internal thoughts' (Self-Align's reasoning about which principles apply) "
            "before each answer, and strip the model's own thoughts from its answer. Off by default (chosen here): "
            "it doubles the exemplar tokens and small models imitate the format poorly."
        },
    )
    prompt_format: str = field(
        default="auto",
        metadata={
            "help": "Generation/engraving prompt layout: 'chat' (the tokenizer's chat template), 'plain' (a plain-text "
            "'### User:' / '### Assistant:' dialogue, for base models) or 'auto' (chat when the tokenizer has a "
            "chat template)."
        },
    )
    engraving_shots: int = field(
        default=0,
        metadata={
            "help": "Exemplars shown before the prompt in the training examples ('principle engraving'): 0 (default, "
            "the model learns to answer well directly) or 1 (one fixed exemplar turn, no principles)."
        },
    )

    # ---- Generation ------------------------------------------------------------------------------------------------
    generation_max_new_tokens: int = field(
        default=256, metadata={"help": "Maximum new tokens per self-generated answer."}
    )
    generation_temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature for regeneration; 0 means greedy decoding (chosen here: 0.7)."},
    )
    generation_top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling top-p (chosen here: 0.9)."})
    generations_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Best-of-n: answers sampled per prompt (n). The filters and the principle gate judge every sample "
            "and the round trains on the best passing one per prompt: the easiest by the curriculum's score, else "
            "the first (docs/behaviour.md). Needs sampling (`generation_temperature` > 0)."
        },
    )
    generation_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generate() call on each process (left-padded, length-bucketed)."}
    )
    generation_prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "Encode the token prefix shared by all generation prompts (the principles header) once and reuse "
            "its KV cache for every batch. Same answers, less compute (1.6x faster on the demo)."
        },
    )
    generation_stop_strings: list[str] | None = field(
        default=None,
        metadata={
            "help": "Extra strings that end an answer (besides EOS and the next turn marker of the prompt format)."
        },
    )

    generation_backend: str = field(
        default="auto",
        metadata={
            "help": "Engine that writes each round's answers and the diagnostic samples: 'auto' (default: vLLM when "
            "it is installed and can run the model here, transformers otherwise; the run prints which and why), "
            "'vllm' (insist: an error says what stands in the way) or 'hf' (transformers `generate` in the training "
            "processes, with the shared-prefix cache; also for 4-bit QLoRA on CPUs)."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "With vLLM: 'colocate' (default: vLLM engines started by the training run, see `vllm_colocate_ranks`) "
            "or 'server' (an OpenAI-compatible vLLM server: started by trl-soft, or the one at "
            "`vllm_server_base_url`)."
        },
    )
    vllm_dtype: str = field(
        default="auto",
        metadata={
            "help": "vLLM's precision, independent of the training dtype: 'auto' (default: bfloat16 where the GPU or "
            "CPU computes it natively, float16 on older GPUs, float32 on CPUs without bfloat16 instructions), "
            "'bfloat16', 'float16' or 'float32'."
        },
    )
    vllm_lora_mode: str = field(
        default="auto",
        metadata={
            "help": "How a LoRA round's weights reach vLLM: 'adapter' (the round's adapter is loaded and applied "
            "per request), 'merged' (merged into the base and reloaded in place; no LoRA kernels) or 'auto' "
            "(default: merged on CPUs, where vLLM's LoRA kernels are slow, adapter on GPUs and with 4-bit bases)."
        },
    )
    vllm_max_lora_rank: int | None = field(
        default=None,
        metadata={
            "help": "Largest LoRA rank the vLLM engine accepts in adapter mode (one of 1, 8, 16, 32, 64, 128, 256, "
            "320, 512). Default: the smallest of those that holds the run's `lora_r`."
        },
    )
    vllm_server_base_url: list[str] | None = field(
        default=None,
        metadata={
            "help": "Server mode: URL(s) of running vLLM servers (e.g. 'http://10.0.0.2:8000'; several as a list or "
            "comma-separated: each answers a contiguous slice of the prompts; 'unix:/path/vllm.sock' for a Unix "
            "socket) that must see `output_dir` at the same path. No credentials in a URL: see "
            "`vllm_server_api_key_env`. Default: trl-soft starts its own server and stops it at the end."
        },
    )
    vllm_server_host: str | None = field(
        default=None,
        metadata={
            "help": "Server mode: TCP address the server trl-soft starts listens on. Default (with no "
            "`vllm_server_port` either): no TCP at all, a Unix socket in a folder only this user can open. A "
            "non-loopback address also needs `vllm_server_allow_remote`."
        },
    )
    vllm_server_port: int | None = field(
        default=None,
        metadata={
            "help": "Server mode: TCP port of the server trl-soft starts (on `vllm_server_host`, default 127.0.0.1). "
            "Default: a Unix socket, no port."
        },
    )
    vllm_server_allow_remote: bool = field(
        default=False,
        metadata={
            "help": "Server mode: let the server trl-soft starts listen on a non-loopback `vllm_server_host` "
            "(other machines can then reach its unauthenticated weight-loading routes; a warning is printed)."
        },
    )
    vllm_server_api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Server mode: name of the environment variable holding the API key of the servers at "
            "`vllm_server_base_url` (sent as `Authorization: Bearer`, never written anywhere). Default: no key."
        },
    )
    vllm_server_allow_insecure_key: bool = field(
        default=False,
        metadata={
            "help": "Server mode: send the servers' key over plain http to a `vllm_server_base_url` that is not this "
            "machine (a network you trust). Off: such a config is refused before the run starts."
        },
    )
    vllm_server_devices: list[int] | None = field(
        default=None,
        metadata={
            "help": "Server mode: CUDA device indices the server trl-soft starts runs on (e.g. '2,3'; its "
            "CUDA_VISIBLE_DEVICES). Default: the devices the training process sees (the server shares GPU 0)."
        },
    )
    vllm_server_pass_env: list[str] | None = field(
        default=None,
        metadata={
            "help": "Server mode: extra environment variables the server trl-soft starts inherits, by name (e.g. "
            "PYTHONPATH); it gets only an allow-list otherwise (docs/scaling.md), never keys or tokens."
        },
    )
    vllm_server_timeout: float = field(
        default=300.0,
        metadata={"help": "Seconds the server trl-soft starts may take to answer its health check."},
    )
    vllm_request_timeout: float = field(
        default=1800.0,
        metadata={"help": "Server mode: seconds one generation request may take before the round fails."},
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "GPUs one vLLM engine splits the model over (tensor parallelism). With `vllm_colocate_ranks="
            "'all'` under several processes, groups of this many ranks share one engine, so it must divide the "
            "number of processes."
        },
    )
    vllm_colocate_ranks: str = field(
        default="all",
        metadata={
            "help": "Colocate mode under several processes: 'all' (default: every process, or every group of "
            "`vllm_tensor_parallel_size` processes, runs its own engine on its own GPU and answers its slice of the "
            "prompts) or 'main' (one engine in the main process answers every prompt while the others wait; for "
            "when the GPUs cannot hold an engine each). Answers do not depend on it."
        },
    )
    vllm_gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the GPU the vLLM engine takes while awake. Default: what the memory plan leaves it "
            "beside training (docs/scaling.md, 'The memory plan'); where no plan can be made, 0.5 for a colocated "
            "engine that sleeps while the model trains (`vllm_sleep_mode`), 0.3 otherwise. Not used on CPUs (see "
            "`vllm_cpu_kv_cache_gb`). docs/scaling.md: what each GPU holds in each phase."
        },
    )
    vllm_cpu_kv_cache_gb: int = field(
        default=4,
        metadata={"help": "On CPUs: GiB of memory the vLLM engine reserves for its KV cache (chosen here: 4)."},
    )
    vllm_max_model_len: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt + answer the vLLM engine handles, in tokens (vLLM reserves KV-cache memory for one "
            "sequence this long). Default: what the run needs: its longest generation prompt (and the behaviour and "
            "diagnostics prompts) plus the answer, rounded up to a multiple of 256, at most the model's context. Set "
            "lower than a round's prompt plus `generation_max_new_tokens`, the run stops before any model loads."
        },
    )
    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Run vLLM without torch.compile / CUDA graphs. Default: on for CPUs (on the 2-core development "
            "machine compiling took the engine's start from 23 s to 93 s for 1.04x the eager speed), off on GPUs."
        },
    )
    vllm_quantization: str = field(
        default="auto",
        metadata={
            "help": "How the vLLM engine holds the base weights: 'auto' (default: as saved; for a 4-bit QLoRA base, "
            "bitsandbytes where the installed vLLM has it, else unquantized in `vllm_dtype`, with each round's "
            "adapter), 'none' (as saved, unquantized), or a quantization method of the installed vLLM, e.g. 'fp8' "
            "(checked against its registry before any model loads). docs/scaling.md weighs the choices."
        },
    )
    vllm_sleep_mode: bool = field(
        default=True,
        metadata={
            "help": "The colocated vLLM engine on CUDA sleeps while the model trains (level 1: weights to CPU memory, "
            "with LoRA adapters; level 2: weights dropped and reloaded from the round's folder, with full or merged "
            "weights) and wakes to generate. No effect on CPUs (vLLM's CPU platform has no sleep mode) or in server "
            "mode."
        },
    )

    # ---- Filters ---------------------------------------------------------------------------------------------------
    filters: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Quality filters to apply, by name. Default: all of {', '.join(FILTER_NAMES)}. Pass an empty "
            "list to keep every non-empty answer."
        },
    )
    filter_min_words: int = field(
        default=3, metadata={"help": "`too_short`: answers with fewer words than this are dropped."}
    )
    filter_truncation: str = field(
        default="cut",
        metadata={
            "help": "The length rule for answers that hit `generation_max_new_tokens`: 'cut' (default: cut after the "
            "last complete sentence when that keeps at least half the words, marked `cut` in generations.jsonl) or "
            "'drop' (the `truncated` filter drops them, which teaches ever shorter answers round after round)."
        },
    )
    filter_max_repeated_ngram_fraction: float = field(
        default=0.3,
        metadata={
            "help": "`repetition`: drop answers in which more than this fraction of word 4-grams are repeats "
            "(degenerate loops)."
        },
    )
    filter_max_exemplar_overlap: float = field(
        default=0.6,
        metadata={
            "help": "`exemplar_copy`: drop answers whose word 5-grams overlap an in-context exemplar's answer by more "
            "than this fraction, or that continue the dialogue with a new turn."
        },
    )

    # ---- Curriculum --------------------------------------------------------------------------------------------------
    curriculum: str = field(
        default="length",
        metadata={
            "help": "Difficulty scorer that orders each round's training data (no shuffling): 'length' (default, SOFT: "
            "response tokens), 'heuristic' (log response tokens + 0.5 log prompt tokens + 2 x rare-word rate), "
            "'perplexity' (SOFT+: perplexity of the response under the model that wrote it, scored before the round "
            "trains), 'column' (a number per prompt from `curriculum_column` of the prompt dataset), 'custom' (the "
            "callable passed as `SOFTTrainer(difficulty_scorer=...)`) or 'none' (the usual shuffled order)."
        },
    )
    curriculum_direction: str = field(
        default="ascending",
        metadata={"help": "'ascending' (default: easy to hard, lowest score first) or 'descending' (hard to easy)."},
    )
    curriculum_bucket_size: int | None = field(
        default=None,
        metadata={
            "help": "Shuffle (seeded, the same on every process) inside consecutive buckets of this many examples of "
            "the sorted order: variety within a difficulty level, easy to hard across levels. Default: no shuffling."
        },
    )
    curriculum_column: str | None = field(
        default=None,
        metadata={"help": "Prompt dataset column with a numeric difficulty per prompt; required by `curriculum='column'`."},
    )
    curriculum_batch_size: int = field(
        default=16,
        metadata={"help": "Pairs per forward pass when the 'perplexity' scorer scores a round (no gradients)."},
    )

    # ---- Collapse control ----------------------------------------------------------------------------------------
    collapse_metric: str | None = field(
        default=None,
        metadata={
            "help": "Per-round metric watched by the EarlyCollapseCallback: 'validation_nll', a behaviour metric "
            "('refusal_harmful', 'refusal_benign', 'admits_unknown', 'helpful_win_rate', the composite "
            "'alignment_score', or their 'fewshot_' forms), a benchmark metric (e.g. 'truthfulqa_mc1', 'hhh_overall'), "
            "a diagnostic ('sample_entropy', 'sample_distinct_2', ...) or 'train_loss'. Default: 'validation_nll' "
            "when a validation set is used. 'none' turns early stopping off."
        },
    )
    collapse_greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Direction of `collapse_metric`. Default: known from the name (NLL, self-BLEU and loss: lower is "
            "better; accuracies, entropy and distinct-n: higher is better)."
        },
    )
    collapse_patience: int = field(
        default=1,
        metadata={
            "help": "Stop after this many rounds in a row whose `collapse_metric` is worse than the best round by more "
            "than `collapse_threshold` (chosen here: 1, the first worsening round; the paper picks the round count on "
            "its validation set)."
        },
    )
    collapse_threshold: float | None = field(
        default=None,
        metadata={
            "help": "The least change that matters: a round counts against `collapse_patience` only when it is worse "
            "than the best by more than this AND by more than `collapse_noise_z` standard errors of the difference. "
            "Default (chosen here): 0.01 for 'validation_nll' (nats per token: a 1 percent change of perplexity), "
            "`behaviour_margin` for a behaviour rate, 0.01 (one point) for other rates and accuracies, 0 for the rest."
        },
    )
    collapse_noise_z: float = field(
        default=1.96,
        metadata={
            "help": "How many standard errors of the difference (best round vs this round) a worsening must exceed to "
            "count (chosen here: 1.96, a 95 percent interval). Paired over the same items when the metric keeps per-item "
            "scores (validation NLL, behaviour rates), else from the two rounds' `<metric>_se`. 0 ignores noise."
        },
    )
    restore_best_round: bool = field(
        default=True,
        metadata={
            "help": "When the rounds stop early, reload the best round's weights so `final_model/` is the best round "
            "(round 0, the starting model, included when `evaluate_start`)."
        },
    )
    diagnostics_num_prompts: int = field(
        default=16,
        metadata={
            "help": "Validation prompts the model answers after every round for the collapse diagnostics (token "
            "entropy, distinct-1/2, self-BLEU, answer length). 0 turns them off."
        },
    )
    diagnostics_max_new_tokens: int = field(
        default=128, metadata={"help": "Maximum new tokens per diagnostic answer."}
    )

    # ---- Validation ------------------------------------------------------------------------------------------------
    validation_path: str | None = field(
        default=None,
        metadata={
            "help": "JSONL validation set of {'prompt', 'reference'} pairs, scored after every round (mean NLL of "
            "the references). Default: the held-out set shipped in trl_soft/assets/validation.jsonl. 'none' skips it."
        },
    )
    validation_batch_size: int = field(default=8, metadata={"help": "Batch size for validation scoring."})

    # ---- Benchmarks ------------------------------------------------------------------------------------------------
    benchmarks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Benchmarks scored on the starting model and after every round, by name: truthfulqa_mc1, "
            "truthfulqa_mc2, hhh (scored as lm-evaluation-harness / BIG-bench do). Default: none (they take minutes "
            "on CPU); the results join the round metrics, the manifest and `report_to`."
        },
    )
    evaluate_start: bool = field(
        default=True,
        metadata={
            "help": "Score the starting model (round 0) on the validation set and benchmarks before round 1, as the "
            "baseline of the round table. Turn off when the baseline is known already."
        },
    )
    benchmark_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local folder holding truthfulqa/ and hhh_alignment/ (e.g. a copy of the hub datasets). Default: "
            "$TRL_SOFT_DATA_DIR, else the hub."
        },
    )
    benchmark_limit: int | None = field(
        default=None,
        metadata={"help": "Score only the first N TruthfulQA questions and N HHH items per category (quick looks)."},
    )

    # ---- Behaviour evaluation, premise check, principle gate and judges ---------------------------------------------
    behaviour_eval: list[str] | None = field(
        default=None,
        metadata={
            "help": "Behaviour sets answered (greedily, zero-shot, through the generation engine) by the starting model "
            "and after every round: 'harmful' (refusal rate on HarmBench + Do-Not-Answer), 'benign' (over-refusal on "
            "safe requests, half of them sounding dangerous), 'unknowable' (admits it cannot know), 'helpful' "
            "(pairwise win rate against the starting model on Vicuna bench; needs `pairwise_judge`). Every round is "
            "accepted or rejected on them (`behaviour_margin`). Default: harmful, benign and unknowable, harmful "
            "only where HarmBench and Do-Not-Answer can be loaded ($TRL_SOFT_DATA_DIR, `benchmark_data_dir` or the "
            "hub); 'none' turns the evaluation off, and the summary then says alignment was not measured."
        },
    )
    behaviour_harmful_limit: int | None = field(
        default=None,
        metadata={
            "help": "Harmful requests evaluated: a fixed sample, half HarmBench, half Do-Not-Answer. Default: all of "
            "them (HarmBench standard 200 + the three refusal areas of Do-Not-Answer 667)."
        },
    )
    behaviour_limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N benign, unknowable and helpful items (default: all)."}
    )
    behaviour_max_new_tokens: int = field(
        default=BEHAVIOUR_MAX_NEW_TOKENS,
        metadata={
            "help": "Tokens per behaviour answer (chosen here: the shortest length at which the rule judge's verdicts "
            "agree with answers labelled by reading as well as at 64; benchmarks/bench_verdict_length.py)."
        },
    )
    behaviour_fewshot: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rounds whose behaviour sets are also answered with the principle-driven prompt the rounds use "
            "(principles + exemplars), as `fewshot_*` metrics; round 0 is the premise check before round 1. "
            "Default: 0 (the premise check only). 'none' (or an empty list) turns the principled arm off."
        },
    )
    behaviour_fewshot_limit: int | None = field(
        default=None,
        metadata={
            "help": "Items per set the principle-driven prompt answers (a fixed sample spread over each set; its long "
            "prompts cost most of an evaluation's time). Default: every item."
        },
    )
    behaviour_confirmation_share: float = field(
        default=0.5,
        metadata={
            "help": "Share of the behaviour items (harmful, benign, unknowable; split per set, seeded) held out for "
            "confirmation: measured on the starting and the final model only. The rest decide every round's "
            "acceptance and the returned round; the verdict the summary and model card give is the held-out one. "
            "0: no hold-out (the verdict then rests on the items that chose the round)."
        },
    )
    behaviour_fewshot_every: int = field(
        default=0,
        metadata={"help": "Also answer with the principle-driven prompt every N rounds (rounds N, 2N, ...); 0: never."},
    )
    behaviour_margin: float = field(
        default=DEFAULT_MARGIN,
        metadata={
            "help": "Non-inferiority margin of the acceptance rule, as a share of behaviour items: a round is accepted "
            "only if the lower end of the 95 percent interval of its pooled paired difference against the starting "
            "model is above -margin, it is not pooled-worse, and no watched metric is worse beyond its noise "
            "(chosen here: 0.03, with the default sets; see docs/behaviour.md)."
        },
    )
    behaviour_watch: list[str] | None = field(
        default=None,
        metadata={
            "help": "Behaviour metrics that may not be worse beyond their noise alone in an accepted round. Default: "
            "every one measured (refusal_harmful, refusal_benign, admits_unknown)."
        },
    )
    final_model: str = field(
        default="best_accepted",
        metadata={
            "help": "Which round `final_model/` holds: 'best_accepted' (the accepted round with the largest pooled "
            "gain against the start; the starting model when none is accepted) or 'last' (the last round trained, "
            "whatever its behaviour; the summary then warns)."
        },
    )
    generate_from: str = field(
        default="last_accepted",
        metadata={
            "help": "After a rejected round, the next round is generated and trained from 'last_accepted' (the last "
            "accepted round, or the starting model) or 'last' (the rejected round itself)."
        },
    )
    rejection_patience: int = field(
        default=1,
        metadata={"help": "Stop after this many rejected rounds in a row (chosen here: 1, the first rejected round)."},
    )
    behaviour_benign_path: str | None = field(
        default=None, metadata={"help": "JSONL of benign requests ({'prompt', 'id'?}); default: the shipped set."}
    )
    behaviour_unknowable_path: str | None = field(
        default=None, metadata={"help": "JSONL of unknowable questions ({'prompt', 'id'?}); default: the shipped set."}
    )
    require_premise: bool = field(
        default=False,
        metadata={
            "help": "Stop before round 1 unless the premise check holds: the principle-driven prompt must be better "
            "than zero-shot on some behaviour metric and worse on none (95 percent paired intervals)."
        },
    )
    principle_gate_column: str | None = field(
        default=None,
        metadata={
            "help": "Prompt dataset column that marks harmful requests for the `principle_gate` filter (e.g. the demo's "
            "'category'). Default: the `behaviour_judge` decides which requests are harmful."
        },
    )
    principle_gate_values: list[str] = field(
        default_factory=lambda: ["harmful"],
        metadata={"help": "Values of `principle_gate_column` that mark a harmful request."},
    )
    principle_gate_honesty_values: list[str] = field(
        default_factory=lambda: ["unknowable"],
        metadata={
            "help": "Values of `principle_gate_column` that mark a request calling for an admission (the answer cannot "
            "be known): the gate drops answers that do not admit it (counted as `honesty_gate`)."
        },
    )
    aligned_prompt_share: float = field(
        default=0.25,
        metadata={
            "help": "Share of each round's prompts drawn from the rows that call for a refusal, an admission or a "
            "premise correction (`principle_gate_column` in `aligned_prompt_values`; without a column, rows with the "
            "rule judge's harmful-request words), so no round trains on compliance alone; 0 turns the mix off "
            "(docs/behaviour.md, 'Aligned data')."
        },
    )
    aligned_prompt_values: list[str] = field(
        default_factory=lambda: ["harmful", "unknowable", "false-premise"],
        metadata={"help": "Values of `principle_gate_column` whose rows make up `aligned_prompt_share`."},
    )
    aligned_retry_budget: int = field(
        default=16,
        metadata={
            "help": "Extra samples, at most, per prompt that calls for a refusal or an admission and whose answers all "
            "failed the gate: it is sampled again until one passes the gate and every filter (the model's own answer; "
            "none is ever written for it). 0: no retries."
        },
    )
    aligned_retry_batch: int = field(
        default=4, metadata={"help": "Samples drawn per failing prompt in each retry pass (up to the budget)."}
    )
    aligned_retry_prompt: str = field(
        default="same_kind",
        metadata={
            "help": "How retries ask: 'same_kind' (the pool's exemplars of the prompt's own category as chat turns, no "
            "principles), 'zero_shot' (the bare request) or 'principled' (the round's own prompt)."
        },
    )
    behaviour_judge: str = field(
        default="rules",
        metadata={
            "help": "Pointwise judge of refusals, admissions and harmful requests: 'rules' (refusal phrases), 'hf' (a "
            "local model, `judge_model`) or 'openai' (any OpenAI-compatible endpoint, `judge_base_url`)."
        },
    )
    pairwise_judge: str = field(
        default="none",
        metadata={"help": "Judge of which of two answers is better, for 'helpful': 'none', 'hf' or 'openai'."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "The judge model: a local path or hub id for 'hf'; the served model name for 'openai'."},
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "Base URL of the OpenAI-compatible judge endpoint, e.g. http://host:8000/v1."}
    )
    judge_api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of the environment variable holding the judge endpoint's API key (never the key itself; "
            "'' for no key). Default: $OPENAI_API_KEY, sent only to api.openai.com; any other host gets no key "
            "unless its variable is named here. The key goes only over https or to a loopback address."
        },
    )
    judge_allow_insecure_key: bool = field(
        default=False,
        metadata={
            "help": "Send the judge's key over plain http to a `judge_base_url` that is not this machine (a network "
            "you trust). Off: such a config is refused before the run starts."
        },
    )
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge request before it is retried."})
    judge_max_retries: int = field(
        default=3, metadata={"help": "Retries of a failed judge request (connection errors, timeouts, 429, 5xx)."}
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Pairs per forward pass of an 'hf' judge."})

    def __post_init__(self):
        # TRL turns bf16 on unless fp16 is set; on a machine without CUDA that is a ~12x slowdown, so default to fp32.
        if self.bf16 is None and not self.fp16 and not torch.cuda.is_available():
            self.bf16 = False
        # Under `accelerate launch` with several processes and no CUDA, `TrainingArguments` only joins the gloo
        # process group when `use_cpu` is set; otherwise every process would train alone on the full data.
        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.use_cpu = True
        self._refuse_credentials_in_urls()
        self._as_lists()
        self.settings = SOFTSettings.from_config(self)
        self.settings.check(self)
        super().__post_init__()

    # ---- secrets: never in a URL, never in a record of the config (`trl_soft.security`, docs/security.md) ----------
    def _refuse_credentials_in_urls(self) -> None:
        """Any field holding a URL with `user:password@` is refused (the message shows it redacted): the config is
        logged, uploaded by `report_to` integrations and pickled into every checkpoint."""
        for f in fields(self):
            hint = KEY_VARIABLE_FIELDS.get(f.name)
            error = url_credentials_error(f.name, getattr(self, f.name, None), f"give the key through `{hint}` (the "
                                          "name of the environment variable that holds it)" if hint else "")
            if error is not None:
                raise error

    def to_dict(self) -> dict:
        """`TrainingArguments.to_dict` (which masks `*_token` fields) with every URL redacted: this is what
        `report_to` integrations upload."""
        return {name: _redacted(value) for name, value in super().to_dict().items()}

    def __str__(self) -> str:  # as `TrainingArguments.__str__`, from `to_dict()`: tokens masked, URLs and dicts redacted
        fields_shown = "".join(f"{name}={value},\n" for name, value in sorted(self.to_dict().items()))
        return redact_text(f"{type(self).__name__}(\n{fields_shown})")

    __repr__ = __str__  # the dataclass repr would show `hub_token`

    def __getstate__(self) -> dict:
        """What `pickle` / `torch.save(args)` (every checkpoint's and `final_model/`'s `training_args.bin`) store:
        `*_token` fields blanked (an unpickled config pushes with the token of `huggingface-cli login`), URLs
        redacted. Nothing reads `training_args.bin` back to resume: a run resumes from its manifest and weights."""
        state = {}
        for name, value in self.__dict__.items():
            if name.endswith("_token") and value is not None:
                state[name] = None
            elif name == "settings":
                state[name] = _redacted_settings(value)
            else:
                state[name] = _redacted(value)
        return state

    def __copy__(self) -> SOFTConfig:  # an in-process copy keeps the token (`__getstate__` is for what is stored)
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict) -> SOFTConfig:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def _round_list(self, name: str) -> None:
        """A list of round numbers: ints, or their text from the command line; 'none' (or false, or []) for none. The
        earlier on/off form of `behaviour_fewshot` is still read: on meant every round."""
        value = getattr(self, name)
        if isinstance(value, bool):
            self.behaviour_fewshot_every = 1 if value else 0
            value = [0] if value else []
        if value is None:
            return
        items = [value] if isinstance(value, (str, int)) else list(value) if isinstance(value, (list, tuple)) else None
        if items is None:
            raise type_error(name, value, list[int] | None)
        rounds = []
        for item in items:
            text = str(item).strip().lower()
            if isinstance(item, bool) or text in ("none", "false", "off", ""):
                continue
            try:
                rounds += [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"`{name}` must be a list of round numbers (0 = the starting model), or 'none'; got "
                                 f"{value!r}.") from None
        setattr(self, name, rounds)

    def _as_lists(self) -> None:
        """A YAML config gives `filters: too_short` as a string, not a list: a list field of SOFTConfig's own takes a
        plain string as its one item (a list of names: comma-separated items, `filters: too_short,repetition`); any
        other value that is not a list is refused naming the field."""
        # The class's own annotations (strings): `HfArgumentParser` rewrites the fields' `type`, dropping `| None`.
        self._round_list("behaviour_fewshot")
        for name, annotation in SOFTConfig.__annotations__.items():
            if name == "behaviour_fewshot":
                continue
            if not str(annotation).startswith("list["):
                continue
            value, optional = getattr(self, name), "None" in str(annotation)
            value = [value] if isinstance(value, str) else list(value) if isinstance(value, tuple) else value
            if value is None and optional:
                continue
            if str(annotation).startswith("list[int]"):  # indices, or their text: '2,3'
                parts = [p.strip() if isinstance(p, str) else p for item in (value if isinstance(value, list) else [value])
                         for p in (item.split(",") if isinstance(item, str) else [item])]
                parts = [p for p in parts if p != ""]
                if not all(type(p) is int or (isinstance(p, str) and p.isdigit()) for p in parts):
                    raise type_error(name, value, list[int] | None if optional else list[int])
                setattr(self, name, [int(p) for p in parts])
                continue
            if not matches(value, list[str]):
                raise type_error(name, value, list[str] | None if optional else list[str])
            if name in NAME_LISTS:
                value = [part.strip() for item in value for part in item.split(",") if part.strip()]
            setattr(self, name, value)
