"""The memory plan: what each GPU holds in a run, worked out from the model's config.json before any weight loads.

Arithmetic, not measurement: parameter counts from the shapes in config.json (embeddings, attention with grouped
key/value heads, gated MLP, norms, tied or separate output layer), bytes from the dtype and the quantization
(bitsandbytes 4-bit NF4/FP4 with its block constants, double-quantized or not; 8-bit), LoRA matrices from the rank and
the target modules, optimizer state from the optimizer's name, activations from the batch and sequence sizes (with or
without gradient checkpointing), sharding (DeepSpeed ZeRO stages, FSDP) over the processes, and the generation engine:
transformers' KV cache in the training process, or a vLLM engine's own weights (the base in its dtype when it cannot
load a bitsandbytes base), LoRA slots, KV cache for `max_model_len` x the concurrent sequences, and its overheads,
awake and asleep. `MemoryPlan.verdict` holds it against a GPU's memory; the engine choice (`engines/choice.py`) and
`trl-soft plan` read it. `tests/test_memory.py` checks the weight and optimizer figures against real tiny models
counted tensor by tensor; docs/scaling.md holds the plans of the documented setups beside published figures.

No torch at module level and nothing of the package but `distributed` (to read every rank's GPU): `trl-soft plan`
runs on a laptop without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download

from .distributed import run_everywhere
from .errors import PlanError

GIB = 2**30
# Per process: the CUDA context, cuBLAS workspaces and allocator slack that no tensor accounts for.
CUDA_RESERVE = 1 * GIB
# A vLLM engine beyond its weights and KV cache: its own CUDA context and communication buffers (kept while it
# sleeps), the activation peak vLLM profiles at start-up for this many batched tokens (its default chunk), and the
# CUDA graphs it captures unless `enforce_eager`.
VLLM_CONTEXT = GIB // 2
VLLM_BATCHED_TOKENS = 8192
VLLM_CUDA_GRAPHS = GIB // 2
# The estimated generation prompt when the tokenizer is not read (`trl-soft plan`): the principles and five
# exemplar turns in a chat template measured ~980 tokens with the SmolLM2 tokenizer (docs/scaling.md); Llama-2's
# tokenizer needs somewhat more.
PROMPT_TOKENS_ESTIMATE = 1280
# bitsandbytes: 4-bit weights in blocks of 64 with one fp32 constant each; double quantization stores those as 8-bit
# in blocks of 256 with an fp32 constant each, plus a 256-entry fp32 code book and an offset per layer.
BNB_BLOCK = 64
BNB_NESTED_BLOCK = 256
BNB_CODE_BYTES = 256 * 4 + 4
# bitsandbytes' 8-bit optimizers keep 32-bit state for tensors smaller than this (`min_8bit_size`).
BNB_MIN_8BIT_SIZE = 4096
# Optimizer state bytes per trainable parameter, by `optim` name (TrainingArguments' names); None: in the
# parameter's own dtype (torch's AdamW keeps exp_avg and exp_avg_sq like the parameter).
EIGHT_BIT_ADAM = 2  # two uint8 states, an fp32 constant per 256 values for each, two 256-entry fp32 maps per tensor
EIGHT_BIT_BLOCK = 256
EIGHT_BIT_MAPS = 2 * 256 * 4
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "int8": 1, "float8_e4m3fn": 1}
GATED_MLP_FREE = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi"}  # two MLP matrices, not three
ATTENTION_BIAS = {"qwen2": ("q_proj", "k_proj", "v_proj")}  # biases without `attention_bias` in config.json
# PEFT's default LoRA targets when `target_modules` is unset (peft.utils.constants, for these model types).
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def parse_size(text: str) -> int:
    """'24GiB', '80 GB' (10^9), '40960MiB', '24' (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|[KMGT])?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (write e.g. '24GiB', '80GB' or '40960MiB')")
    number, unit = float(match.group(1)), (match.group(2) or "GiB").upper()
    power = "KMGT".index(unit[0]) + 1
    return int(number * (1024**power if "I" in unit or unit in "KMGT" else 1000**power))


def dtype_bytes(name) -> int:
    name = str(name or "float32").replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise PlanError(f"unknown dtype {name!r} (planned: {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[name]


# ---- the model, from config.json ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes, as config.json gives them."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    dtype: str  # the dtype the checkpoint was saved in
    context: int | None
    experts: int = 1
    gated: bool = True
    biases: tuple[str, ...] = ()  # linear layers with a bias

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
            config = {**config["text_config"], "tie_word_embeddings": config.get("tie_word_embeddings")}

        def first(*names, default=None):
            for name in names:
                if config.get(name) is not None:
                    return config[name]
            if default is None:
                raise PlanError(f"config.json has none of {', '.join(names)}: cannot plan this model's memory")
            return default

        model_type = str(config.get("model_type", ""))
        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head"))
        biases: tuple[str, ...] = ATTENTION_BIAS.get(model_type, ())
        if config.get("attention_bias"):
            biases = ("q_proj", "k_proj", "v_proj", "o_proj")
        if config.get("mlp_bias"):
            biases += ("gate_proj", "up_proj", "down_proj")
        return cls(
            model_type=model_type,
            vocab=int(first("vocab_size")),
            hidden=hidden,
            layers=int(first("num_hidden_layers", "n_layer", "num_layers")),
            heads=heads,
            kv_heads=int(first("num_key_value_heads", "num_attention_heads", "n_head")),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            tied=bool(config.get("tie_word_embeddings", False)),
            dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
            context=config.get("max_position_embeddings"),
            experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
            gated=model_type not in GATED_MLP_FREE,
            biases=biases,
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer (MLP matrices once per expert)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                  "o_proj": (q, self.hidden), "up_proj": (self.hidden, self.intermediate),
                  "down_proj": (self.intermediate, self.hidden)}
        if self.gated:
            shapes["gate_proj"] = (self.hidden, self.intermediate)
        return shapes

    def copies(self, name: str) -> int:
        """How many of this linear layer each decoder layer holds (MLP matrices: one per expert)."""
        return self.experts if name in ("gate_proj", "up_proj", "down_proj") else 1

    @property
    def linear_params(self) -> int:
        """Weights of the decoder's linear layers (the ones bitsandbytes quantizes), without biases."""
        return self.layers * sum(i * o * self.copies(n) for n, (i, o) in self.linear_shapes().items())

    @property
    def other_params(self) -> int:
        """Everything else: embeddings, output layer (unless tied), norms, biases, routers."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = (2 * self.layers + 1) * self.hidden
        shapes = self.linear_shapes()
        bias = self.layers * sum(shapes[n][1] * self.copies(n) for n in self.biases if n in shapes)
        router = self.layers * self.hidden * self.experts if self.experts > 1 else 0
        return embeddings + norms + bias + router

    @property
    def parameters(self) -> int:
        return self.linear_params + self.other_params

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes


def read_model_config(name_or_path: str, revision: str | None = None) -> dict:
    """config.json of a local folder, or the hub's copy of that one file (nothing else is downloaded)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise PlanError(f"{name_or_path} holds no config.json")
    else:
        try:
            path = Path(hf_hub_download(name_or_path, "config.json", revision=revision))
        except Exception as err:  # offline, private, no such repository: the plan says so, the run goes on
            raise PlanError(f"the config.json of {name_or_path!r} could not be read ({type(err).__name__}: {err})") from err
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlanError(f"{path} could not be read as JSON ({err})") from err


# ---- the run ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingShape:
    """What training holds: from the quantization config, the PEFT config and the training arguments."""

    dtype: str = "bfloat16"  # the dtype the model is loaded in (the unquantized parts of a 4-bit one)
    quantization: str | None = None  # 'nf4', 'fp4', 'int8', or None
    double_quant: bool = False
    lora_r: int | None = None  # None: full fine-tuning
    lora_targets: tuple[str, ...] | str | None = None  # names, 'all-linear', or None (PEFT's default)
    modules_to_save: tuple[str, ...] = ()
    optimizer: str = "adamw_torch"
    batch_size: int = 8  # per_device_train_batch_size
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    sharding: str = "none"  # 'none' (one copy per process), 'zero1', 'zero2', 'zero3', 'fsdp'
    processes: int = 1

    @classmethod
    def from_run(cls, args, peft_config, kbit_config, processes: int, seq_len: int) -> TrainingShape:
        """From a `SOFTConfig` (its TrainingArguments fields), a PEFT config and a bitsandbytes config (objects or
        dicts), read by name."""
        kbit = kbit_config.to_dict() if hasattr(kbit_config, "to_dict") else dict(kbit_config or {})
        quantization = None
        if kbit.get("load_in_4bit"):
            quantization = str(kbit.get("bnb_4bit_quant_type") or "fp4")
        elif kbit.get("load_in_8bit"):
            quantization = "int8"
        dtype = str((getattr(args, "model_init_kwargs", None) or {}).get("dtype") or "float32").replace("torch.", "")
        targets = getattr(peft_config, "target_modules", None)
        if targets is not None and not isinstance(targets, str):
            targets = tuple(sorted(targets))
        return cls(
            dtype=dtype,
            quantization=quantization,
            double_quant=bool(kbit.get("bnb_4bit_use_double_quant")),
            lora_r=int(peft_config.r) if peft_config is not None and hasattr(peft_config, "r") else None,
            lora_targets=targets,
            modules_to_save=tuple(getattr(peft_config, "modules_to_save", None) or ()),
            optimizer=str(getattr(args, "optim", "adamw_torch")).split(".")[-1].lower(),
            batch_size=int(getattr(args, "per_device_train_batch_size", 8)),
            seq_len=seq_len,
            gradient_checkpointing=bool(getattr(args, "gradient_checkpointing", True)),
            sharding=sharding_of(args),
            processes=processes,
        )


def sharding_of(args) -> str:
    """'zero<stage>' under DeepSpeed, 'fsdp' under FSDP, else 'none' (DDP: every process holds everything)."""
    deepspeed = getattr(args, "deepspeed", None)
    if deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if isinstance(deepspeed, dict):
            stage = (deepspeed.get("zero_optimization") or {}).get("stage", stage)
        elif isinstance(deepspeed, str) and os.path.isfile(deepspeed):
            stage = (json.loads(Path(deepspeed).read_text()).get("zero_optimization") or {}).get("stage", stage)
        return f"zero{stage}" if str(stage) in ("1", "2", "3") else "zero2"
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    return "none"


@dataclass(frozen=True)
class GenerationShape:
    """What generation holds: the engine, its precision, quantization, length, concurrency and sleep."""

    engine: str = "vllm"  # 'vllm' or 'hf'
    dtype: str = "bfloat16"
    quantization: str | None = None  # the vLLM engine's method (None: the base unquantized, in `dtype`)
    max_model_len: int = 2048
    sequences: int = 8  # concurrent sequences: generation_batch_size
    prompt_tokens: int = PROMPT_TOKENS_ESTIMATE  # for the transformers engine's prefill
    tensor_parallel: int = 1
    sleep: bool = True
    eager: bool = False
    lora_rank: int | None = None  # vLLM's max_lora_rank in adapter mode (its LoRA slots), None: no slots
    own_gpu: bool = False  # a server on GPUs of its own: the engine does not share a GPU with training
    gpu_memory_utilization: float | None = None  # the user's `vllm_gpu_memory_utilization`


@dataclass(frozen=True)
class Item:
    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    fits: bool
    need: int  # the most any phase needs on the GPU
    total: int
    share: float | None  # the GPU share to give vLLM (None: transformers, or no fit)
    phase: str  # the phase that needs the most
    detail: str

    def describe(self) -> str:
        verb = "fits" if self.fits else "does not fit"
        return f"{verb}: {self.detail}"


@dataclass(frozen=True)
class MemoryPlan:
    model: ModelShape
    training: TrainingShape
    generation: GenerationShape
    train_items: tuple[Item, ...] = field(default=())
    engine_items: tuple[Item, ...] = field(default=())

    @classmethod
    def build(cls, model: ModelShape, training: TrainingShape, generation: GenerationShape) -> MemoryPlan:
        plan = cls(model, training, generation)
        return replace(plan, train_items=tuple(plan._training_items()), engine_items=tuple(plan._engine_items()))

    # -- training ------------------------------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """The training model's weights, quantized as configured, on one process before sharding."""
        m, t = self.model, self.training
        other = m.other_params * dtype_bytes(t.dtype)
        linear = m.linear_params
        if t.quantization in ("nf4", "fp4"):
            return other + quantized_4bit_bytes(m, t.double_quant)
        if t.quantization == "int8":
            rows = m.layers * sum(o * m.copies(n) for n, (_, o) in m.linear_shapes().items())
            return other + linear + rows * 4  # int8 weights + one fp32 scale per output row
        return other + linear * dtype_bytes(t.dtype)

    def lora_targets(self) -> tuple[str, ...]:
        targets = self.training.lora_targets
        names = self.model.linear_shapes()
        if targets is None:
            return tuple(n for n in PEFT_DEFAULT_TARGETS if n in names)
        if targets == "all-linear":
            return tuple(names)
        if isinstance(targets, str):  # a regular expression, matched by PEFT against a module's whole name
            where = {n: "self_attn" if n in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp" for n in names}
            return tuple(n for n in names if re.fullmatch(targets, f"model.layers.0.{where[n]}.{n}"))
        return tuple(n for n in names if n in targets)

    def trainable_tensors(self) -> list[int]:
        """Element counts of the trainable tensors (LoRA A and B per targeted matrix, or every weight)."""
        m, t = self.model, self.training
        if t.lora_r is None:
            return [m.parameters]
        shapes = m.linear_shapes()
        tensors = []
        for name in self.lora_targets():
            d_in, d_out = shapes[name]
            tensors += [t.lora_r * d_in, d_out * t.lora_r] * m.layers * m.copies(name)
        for name in t.modules_to_save:  # a trainable copy of a whole module
            if name in ("lm_head", "embed_tokens"):
                tensors.append(m.vocab * m.hidden)
        return tensors

    def trainable_bytes_per_param(self) -> int:
        """LoRA matrices are float32 (PEFT upcasts them), bfloat16 on a quantized base (TRL casts them, as the QLoRA
        paper does) and the base dtype under ZeRO-3 (TRL turns the upcast off); full fine-tuning: the model dtype."""
        t = self.training
        if t.lora_r is None:
            return dtype_bytes(t.dtype)
        if t.quantization:
            return 2
        return dtype_bytes(t.dtype) if t.sharding == "zero3" else 4

    def optimizer_bytes(self) -> int:
        per_param = self.trainable_bytes_per_param()
        name = self.training.optimizer
        total = 0
        for n in self.trainable_tensors():
            if "8bit" in name:
                small = n < BNB_MIN_8BIT_SIZE
                total += 8 * n if small else EIGHT_BIT_ADAM * n + 2 * 4 * math.ceil(n / EIGHT_BIT_BLOCK) + EIGHT_BIT_MAPS
            elif name.startswith("sgd"):
                total += 0
            elif name.startswith("adafactor"):
                total += 4 * int(2 * math.sqrt(n))  # factored second moments: about rows + columns
            elif "32bit" in name:
                total += 8 * n
            else:  # torch's Adam and AdamW variants: exp_avg and exp_avg_sq, like the parameter, plus a step counter
                total += 2 * per_param * n + 4
        return total

    def _shard(self, nbytes: int, what: str) -> int:
        t = self.training
        stages = {"weights": ("zero3", "fsdp"), "gradients": ("zero2", "zero3", "fsdp"),
                  "optimizer": ("zero1", "zero2", "zero3", "fsdp")}
        return math.ceil(nbytes / t.processes) if t.sharding in stages[what] and t.processes > 1 else nbytes

    def activation_bytes(self) -> int:
        """One micro-batch of T tokens: with gradient checkpointing each layer's saved input plus one layer
        recomputed (~34 T h bytes at 2-byte activations, Korthikanti et al. 2022, without attention scores, which
        SDPA does not keep); without it every layer's; plus the logits with their float32 copy and gradient."""
        m, t = self.model, self.training
        tokens = t.batch_size * t.seq_len
        scale = 2 if t.quantization else dtype_bytes(t.dtype)  # a 4-bit model computes in its compute dtype
        layer = 17 * tokens * m.hidden * scale
        saved = m.layers * tokens * m.hidden * scale + layer if t.gradient_checkpointing else m.layers * layer
        return saved + tokens * m.vocab * (scale + 8)

    def _training_items(self) -> list[Item]:
        t = self.training
        trainable = sum(self.trainable_tensors())
        quant = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit"}.get(t.quantization or "", t.dtype)
        if t.quantization in ("nf4", "fp4"):
            quant += " + double-quantized constants" if t.double_quant else " + fp32 block constants"
        shard = f", sharded over {t.processes} ({t.sharding})" if t.sharding != "none" and t.processes > 1 else ""
        weights_note = f"{self.model.parameters / 1e9:.2f} B parameters, {quant}"
        if t.lora_r is None:
            trainable_item = Item("trainable parameters", 0, f"{trainable / 1e6:.1f} M: full fine-tuning, in the weights")
        else:
            targets = self.lora_targets()
            on = "every linear layer" if len(targets) == len(self.model.linear_shapes()) else "+".join(targets)
            trainable_item = Item("trainable parameters", trainable * self.trainable_bytes_per_param(),
                                  f"{trainable / 1e6:.1f} M, LoRA r={t.lora_r} on {on}")
        items = [
            Item("training weights", self._shard(self.weight_bytes(), "weights"),
                 weights_note + (shard if t.sharding in ("zero3", "fsdp") else "")),
            trainable_item,
            Item("optimizer state", self._shard(self.optimizer_bytes(), "optimizer"),
                 t.optimizer + (shard if t.sharding != "none" else "")),
            Item("gradients", self._shard(trainable * self.trainable_bytes_per_param(), "gradients"),
                 "freed after each step"),
            Item("activations", self.activation_bytes(), f"{t.batch_size} x {t.seq_len} tokens, gradient "
                 f"checkpointing {'on' if t.gradient_checkpointing else 'off'}"),
        ]
        if t.sharding in ("zero3", "fsdp") and t.processes > 1:
            items.append(Item("gathered layer", self.weight_bytes() // self.model.layers, "one layer whole at a time"))
        items.append(Item("CUDA context, allocator slack", CUDA_RESERVE, "per process"))
        return items

    def training_bytes(self, resident_only: bool = False) -> int:
        """Training's peak (weights, optimizer state, gradients, activations), or what it keeps between steps."""
        transient = {"gradients", "activations", "gathered layer"}
        return sum(i.bytes for i in self.train_items if not (resident_only and i.name in transient))

    # -- generation ----------------------------------------------------------------------------------------------------
    def _engine_items(self) -> list[Item]:
        m, g = self.model, self.generation
        if g.engine == "hf":
            element = 2 if self.training.quantization else dtype_bytes(self.training.dtype)
            kv = g.sequences * g.max_model_len * m.kv_bytes_per_token(element)
            prefill = 2 * g.sequences * g.prompt_tokens * m.intermediate * element
            items = [Item("KV cache (transformers)", kv, f"{g.sequences} sequences x {g.max_model_len} tokens"),
                     Item("prefill temporaries", prefill, "one MLP layer of the batch's prompts")]
            t = self.training
            if t.sharding == "zero3" and t.processes > 1:  # generation gathers the whole model on every GPU
                items.append(Item("weights gathered to generate", self.weight_bytes() - self._shard(
                    self.weight_bytes(), "weights"), "ZeRO-3 gathers every layer for generate()"))
            return items
        element = dtype_bytes(g.dtype)
        tp = g.tensor_parallel
        if g.quantization == "bitsandbytes":
            weights, how = m.other_params * element + quantized_4bit_bytes(m, False), "bitsandbytes 4-bit"
        elif g.quantization in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
            weights, how = m.other_params * element + m.linear_params, g.quantization
        elif g.quantization:
            weights, how = m.other_params * element + m.linear_params // 2, f"{g.quantization} (as 4-bit)"
        else:
            weights, how = m.parameters * element, f"unquantized, {g.dtype}"
        items = [Item("engine weights", math.ceil(weights / tp), how + (f", split over {tp} GPUs" if tp > 1 else ""))]
        if g.lora_rank:
            slots = g.lora_rank * m.layers * sum((i + o) * m.copies(n) for n, (i, o) in m.linear_shapes().items())
            items.append(Item("LoRA slots", math.ceil(slots * element / tp), f"max_lora_rank {g.lora_rank}"))
        kv = g.sequences * g.max_model_len * m.kv_bytes_per_token(element)
        items.append(Item("KV cache (vLLM)", math.ceil(kv / tp), f"{g.sequences} sequences x {g.max_model_len} tokens"))
        peak = VLLM_BATCHED_TOKENS * (2 * m.intermediate + 4 * m.hidden) * element
        items.append(Item("activation peak", math.ceil(peak / tp), f"{VLLM_BATCHED_TOKENS} batched tokens"))
        items.append(Item("engine context", VLLM_CONTEXT, "kept while asleep"))
        if not g.eager:
            items.append(Item("CUDA graphs", VLLM_CUDA_GRAPHS, "captured at start (not with enforce_eager)"))
        return items

    def engine_bytes(self, asleep: bool = False) -> int:
        if asleep:
            return sum(i.bytes for i in self.engine_items if i.name == "engine context")
        return sum(i.bytes for i in self.engine_items)

    def min_engine_bytes(self) -> int:
        """What vLLM needs to start at all: everything but the KV cache, plus one sequence of `max_model_len`."""
        m, g = self.model, self.generation
        one = math.ceil(g.max_model_len * m.kv_bytes_per_token(dtype_bytes(g.dtype)) / g.tensor_parallel)
        return sum(i.bytes for i in self.engine_items if not i.name.startswith("KV")) + one

    # -- against a GPU -------------------------------------------------------------------------------------------------
    def verdict(self, total: int) -> Verdict:
        """Whether the run fits a GPU of `total` bytes (per process), which phase needs the most, and for vLLM the
        share of the GPU to give it (`gpu_memory_utilization`): all that training does not hold while it generates
        (vLLM reserves its whole share at start, and sizes its KV cache to fill it)."""
        g = self.generation
        peak, resident, engine = self.training_bytes(), self.training_bytes(resident_only=True), self.engine_bytes()
        if g.engine == "hf":
            return self._verdict(total, {"train": peak, "generate": resident + engine}, None,
                                 "transformers generates in the training process")
        if g.own_gpu:  # a server on GPUs of its own: it may take most of them
            share = g.gpu_memory_utilization or 0.9
            verdict = self._verdict(total, {"train": peak, "engine on its own GPU": engine}, share,
                                    "the server has GPUs of its own")
            return verdict if engine <= share * total else replace(verdict, fits=False, share=None)
        beside = resident if g.sleep else peak  # what training holds while the engine is awake
        share = g.gpu_memory_utilization
        if share is None:
            share = max(0.01, math.floor(min(0.95, (total - beside) / total) * 100) / 100)
        phases = {"generate": beside + engine}
        if g.sleep:
            phases["train"] = peak + self.engine_bytes(asleep=True)
        how = "the engine sleeps while the model trains" if g.sleep else "the engine stays awake beside training"
        verdict = self._verdict(total, phases, share, how)
        if share * total < engine:
            return replace(verdict, fits=False, share=None, detail=f"{verdict.detail}; vLLM's share {share:.2f} of "
                           f"the GPU ({gib(share * total)} GiB) holds less than the engine's {gib(engine)} GiB")
        if beside + share * total > total:
            return replace(verdict, fits=False, share=None, detail=f"{verdict.detail}; vLLM's share {share:.2f} "
                           f"({gib(share * total)} GiB) and training's {gib(beside)} GiB exceed the GPU")
        return verdict

    def _verdict(self, total: int, phases: dict[str, int], share: float | None, how: str) -> Verdict:
        phase = max(phases, key=lambda name: phases[name])
        fits = all(v <= total for v in phases.values())
        parts = ", ".join(f"{name} {gib(v)}" for name, v in phases.items())
        detail = f"needs {gib(phases[phase])} GiB of {gib(total)} GiB per GPU ({parts} GiB; {how})"
        if share is not None and fits:
            detail += f"; vLLM gets {share:.2f} of the GPU"
        return Verdict(fits, phases[phase], total, share if fits else None, phase, detail)

    def table(self, total: int | None = None) -> str:
        """The plan as a text table (GiB per GPU), with the verdict for a GPU of `total` bytes when given."""
        g, t = self.generation, self.training
        lines = [f"{'':2}{'item':32}{'GiB':>9}  note", "  training (per process"
                 + (f", {t.processes} processes)" if t.processes > 1 else ")")]
        lines += [f"    {i.name:30}{gib(i.bytes):>9}  {i.note}" for i in self.train_items]
        lines.append(f"    {'peak / kept between steps':30}{gib(self.training_bytes()):>9}  "
                     f"{gib(self.training_bytes(resident_only=True))} kept")
        engine = "transformers" if g.engine == "hf" else (
            f"vLLM, {'sleeps while training' if g.sleep and not g.own_gpu else 'awake'}")
        lines.append(f"  generation ({engine})")
        lines += [f"    {i.name:30}{gib(i.bytes):>9}  {i.note}" for i in self.engine_items]
        if g.engine != "hf":
            lines.append(f"    {'engine awake / asleep':30}{gib(self.engine_bytes()):>9}  "
                         f"{gib(self.engine_bytes(asleep=True))} asleep; starts with at least "
                         f"{gib(self.min_engine_bytes())}")
        if total is not None:
            lines.append(f"  verdict: {self.verdict(total).describe()}")
        return "\n".join(lines)


def quantized_4bit_bytes(model: ModelShape, double_quant: bool) -> int:
    """bitsandbytes 4-bit linear layers: two weights a byte, and their block constants (per linear layer)."""
    total = 0
    for name, (d_in, d_out) in model.linear_shapes().items():
        n = d_in * d_out
        blocks = math.ceil(n / BNB_BLOCK)
        constants = blocks + 4 * math.ceil(blocks / BNB_NESTED_BLOCK) + BNB_CODE_BYTES if double_quant else 4 * blocks
        total += (math.ceil(n / 2) + constants) * model.layers * model.copies(name)
    return total


def device_memory() -> tuple[int, int] | None:
    """(free, total) bytes of this process's GPU (`torch.cuda.mem_get_info`), the smallest over every process (so
    that every rank takes the same decision); None without CUDA."""
    if not torch.cuda.is_available():
        return None

    readings = run_everywhere(lambda: tuple(torch.cuda.mem_get_info()))
    return min(free for free, _ in readings), min(total for _, total in readings)
