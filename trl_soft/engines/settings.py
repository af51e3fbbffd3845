"""The generation engine's settings: which engine, where it runs, in what precision, and how it gets each round's weights.

`SOFTConfig` keeps these as flat `generation_backend` / `vllm_*` fields for the command line; it builds one
`EngineSettings` from them (`EngineSettings.from_config`) and every check here names the `SOFTConfig` field and the fix.
`EngineSettings.CONFIG_FIELDS` is the one list of that mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..settings import ConcernSettings

BACKENDS = ("auto", "vllm", "hf")
VLLM_MODES = ("colocate", "server")
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")
LORA_MODES = ("auto", "adapter", "merged")
# The LoRA ranks vLLM's engine accepts as `max_lora_rank` (vllm.config.lora.MaxLoRARanks in vLLM 0.31).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The metric the engine adds to every round: seconds spent handing the round's weights to the engine.
SYNC_METRIC = "seconds_engine_sync"


@dataclass(frozen=True)
class EngineSettings(ConcernSettings):
    """Everything the generation engine needs to know; built once from `SOFTConfig`."""

    CONFIG_FIELDS = {
        "backend": "generation_backend",
        "vllm_mode": "vllm_mode",
        "dtype": "vllm_dtype",
        "lora_mode": "vllm_lora_mode",
        "max_lora_rank": "vllm_max_lora_rank",
        "server_base_url": "vllm_server_base_url",
        "server_host": "vllm_server_host",
        "server_port": "vllm_server_port",
        "server_timeout": "vllm_server_timeout",
        "request_timeout": "vllm_request_timeout",
        "tensor_parallel_size": "vllm_tensor_parallel_size",
        "gpu_memory_utilization": "vllm_gpu_memory_utilization",
        "cpu_kv_cache_gb": "vllm_cpu_kv_cache_gb",
        "max_model_len": "vllm_max_model_len",
        "enforce_eager": "vllm_enforce_eager",
    }
    # Where and how long the engine runs; not what it writes.
    NOT_FINGERPRINTED = frozenset({
        "vllm_mode", "max_lora_rank", "server_base_url", "server_host", "server_port", "server_timeout",
        "request_timeout", "tensor_parallel_size", "gpu_memory_utilization", "cpu_kv_cache_gb", "max_model_len",
        "enforce_eager",
    })

    backend: str = "auto"
    vllm_mode: str = "colocate"
    dtype: str = "auto"
    lora_mode: str = "auto"
    max_lora_rank: int | None = None
    server_base_url: str | None = None
    server_host: str = "127.0.0.1"
    server_port: int | None = None
    server_timeout: float = 300.0
    request_timeout: float = 1800.0
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    cpu_kv_cache_gb: int = 4
    max_model_len: int | None = None
    enforce_eager: bool | None = None

    def check(self) -> None:
        """Reject impossible values, naming the `SOFTConfig` field and the fix. Nothing is imported or started."""
        for attr, choices in (
            ("backend", BACKENDS),
            ("vllm_mode", VLLM_MODES),
            ("dtype", VLLM_DTYPES),
            ("lora_mode", LORA_MODES),
        ):
            self.check_choice(attr, choices)
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise self.field_error(
                "max_lora_rank", f"must be one of {list(VLLM_LORA_RANKS)} (the ranks vLLM accepts); got "
                f"{self.max_lora_rank}. Leave it unset to use the smallest one that holds the LoRA rank."
            )
        if self.server_base_url is not None and not self.server_base_url.startswith(("http://", "https://")):
            raise self.field_error(
                "server_base_url", f"must be an http(s) URL such as 'http://10.0.0.2:8000'; got {self.server_base_url!r}."
            )
        if self.server_port is not None and not 0 < self.server_port < 65536:
            raise self.field_error(
                "server_port", f"must be a TCP port (1-65535), or unset to pick a free one; got {self.server_port}."
            )
        for attr in ("server_timeout", "request_timeout"):
            if getattr(self, attr) <= 0:
                raise self.field_error(attr, f"must be a positive number of seconds; got {getattr(self, attr)}.")
        if self.tensor_parallel_size < 1:
            raise self.field_error("tensor_parallel_size", f"must be >= 1; got {self.tensor_parallel_size}.")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise self.field_error("gpu_memory_utilization", f"must be in (0, 1]; got {self.gpu_memory_utilization}.")
        if self.cpu_kv_cache_gb < 1:
            raise self.field_error("cpu_kv_cache_gb", f"must be a whole number of GiB >= 1; got {self.cpu_kv_cache_gb}.")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise self.field_error("max_model_len", f"must be >= 16 tokens, or unset for the model's own; got {self.max_model_len}.")

    def metric_names(self) -> set[str]:
        return {SYNC_METRIC}

    @property
    def external_server(self) -> bool:
        """A server somebody else runs, reached at `vllm_server_base_url`; trl-soft starts none."""
        return self.vllm_mode == "server" and self.server_base_url is not None


@cache
def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), as read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str, on_cuda: bool) -> str:
    """The engine's precision: 'auto' is bfloat16 where the hardware computes it fast, else float16 (older GPUs)
    or float32 (CPUs without bfloat16 instructions). Independent of the training dtype."""
    if dtype != "auto":
        return dtype
    if on_cuda:
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def smallest_lora_rank(rank: int) -> int | None:
    """The smallest rank vLLM accepts that holds an adapter of `rank`, or None if none does."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


