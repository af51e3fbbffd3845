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
from dataclasses import dataclass, fields

import torch
from trl import SFTConfig

from .acceptance import AcceptanceSettings
from .aligned import AlignedSettings
from .behaviour.settings import BehaviourSettings
from .callbacks import CollapseSettings
from .curriculum import CurriculumSettings
from .engines.settings import EngineSettings, cpu_has_fast_bfloat16
from .evaluation.benchmarks import BenchmarkSettings
from .evaluation.diagnostics import DiagnosticsSettings
from .evaluation.validation import VALIDATION_METRIC, ValidationSettings
from .filters import FilterSettings
from .generation import GenerationSettings
from .judges.settings import JudgeSettings
from .prompting import PromptSettings
from .rounds import RoundSettings
from .security import redact_secrets, redact_text, redact_url, url_credentials_error
from .settings import ConcernSettings, config_settings, matches, type_error

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
        if self.filters.truncation == "prefix" and config.packing:
            raise ValueError(
                "`filter_truncation='prefix'` cannot be combined with `packing=True`: packing joins the examples, so a "
                "cut answer's end-of-turn can no longer be left out of its loss. Set `packing=False` or "
                "`filter_truncation='cut'`."
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


def with_settings(cls: type) -> type:
    """Give `cls` (before `@dataclass`) one field per setting the concerns declare, concern by concern in `CONCERNS`
    order: its name, type, default and help as the concern's `setting(...)` says. This is how `SOFTConfig`'s fields,
    and with them the command line, YAML configs and docs/configuration.md, come from the one declaration of each
    setting. A field `SFTConfig` has already (`seed`) is read by the concern (`read_from`), never declared again."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    inherited = {f.name for f in fields(SFTConfig)}
    for concern in CONCERNS.values():
        for declared in config_settings(concern):
            if declared.name in annotations or declared.name in inherited:
                raise TypeError(f"`{declared.name}` ({concern.__name__}) is declared twice; declare it once and "
                                "`read_from` it elsewhere.")
            annotations[declared.name] = declared.type
            setattr(cls, declared.name, declared.field())
    cls.__annotations__ = annotations
    return cls


@dataclass
@with_settings
class SOFTConfig(SFTConfig):
    r"""
    Configuration class for [`SOFTTrainer`]: `SFTConfig` plus the round loop of Step-On-Feet Tuning.

    Each round t answers a chunk of prompts few-shot with the model of round t-1 (principles + k exemplars sampled per
    prompt), filters the answers, orders them easy to hard, fine-tunes on (prompt, answer) without principles or
    exemplars, and scores a held-out validation set. All `SFTConfig` fields apply to the fine-tuning of every round.

    Difference from `SFTConfig` defaults: `bf16` defaults to `True` only where the hardware computes bfloat16 natively
    (a CUDA device, or a CPU with AVX-512 BF16 or AMX); on other CPUs it defaults to `False` (float32), because they
    train about 12x slower in it.

    The fields added to `SFTConfig` are declared once each, in their concern's settings class (`CONCERNS`), and
    added here by `with_settings`; docs/configuration.md lists them.
    """

    def __post_init__(self):
        # TRL turns bf16 on unless fp16 is set; on a CPU without bfloat16 instructions that is a ~12x slowdown, so
        # fp32 there. On one with them, bf16 autocast trains the embedded model's LoRA steps 1.4x faster (2 cores).
        if self.bf16 is None and not self.fp16 and not torch.cuda.is_available():
            self.bf16 = cpu_has_fast_bfloat16()
            if self.bf16:
                self.use_cpu = True  # `TrainingArguments` takes bf16 without a GPU only with `use_cpu`
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
        # The settings' types, as `with_settings` gave them (`HfArgumentParser` rewrites the fields' `type`).
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
