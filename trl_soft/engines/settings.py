"""The generation engine's settings: which engine, where it runs, in what precision, and how it gets each round's weights.

`SOFTConfig` keeps these as flat `generation_backend` / `vllm_*` fields for the command line; it builds one
`EngineSettings` from them (`EngineSettings.from_config`) and every check here names the `SOFTConfig` field and the fix.
`EngineSettings.CONFIG_FIELDS` is the one list of that mapping.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import torch

from ..security import ENV_NAME, host_of, is_loopback, key_may_travel, redact_url
from ..settings import ConcernSettings

BACKENDS = ("auto", "vllm", "hf")
VLLM_MODES = ("colocate", "server")
# Colocate mode under several processes: an engine on every rank (or tensor-parallel group), or on the main one only.
COLOCATE_RANKS = ("all", "main")
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")
LORA_MODES = ("auto", "adapter", "merged")
# The LoRA ranks vLLM's engine accepts as `max_lora_rank` (vllm.config.lora.MaxLoRARanks in vLLM 0.31).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's GPU share when `vllm_gpu_memory_utilization` is unset (docs/scaling.md, "What each GPU holds"): beside a
# training step's peak (the engine stays awake), or beside training's resident weights and optimizer state only (the
# engine sleeps while the model trains).
GPU_SHARE = 0.3
GPU_SHARE_SLEEPING = 0.5
# What `vllm_quantization` may look like; which names exist is the installed vLLM's registry (choice.py).
QUANTIZATION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
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
        "server_allow_remote": "vllm_server_allow_remote",
        "server_api_key_env": "vllm_server_api_key_env",
        "server_allow_insecure_key": "vllm_server_allow_insecure_key",
        "server_devices": "vllm_server_devices",
        "server_pass_env": "vllm_server_pass_env",
        "server_timeout": "vllm_server_timeout",
        "request_timeout": "vllm_request_timeout",
        "tensor_parallel_size": "vllm_tensor_parallel_size",
        "colocate_ranks": "vllm_colocate_ranks",
        "gpu_memory_utilization": "vllm_gpu_memory_utilization",
        "cpu_kv_cache_gb": "vllm_cpu_kv_cache_gb",
        "max_model_len": "vllm_max_model_len",
        "enforce_eager": "vllm_enforce_eager",
        "quantization": "vllm_quantization",
        "sleep_mode": "vllm_sleep_mode",
    }
    # Where and how long the engine runs; not what it writes.
    NOT_FINGERPRINTED = frozenset({
        "vllm_mode", "max_lora_rank", "server_base_url", "server_host", "server_port", "server_timeout",
        "server_allow_remote", "server_api_key_env", "server_allow_insecure_key", "server_devices", "server_pass_env",
        "request_timeout", "tensor_parallel_size", "colocate_ranks", "gpu_memory_utilization", "cpu_kv_cache_gb",
        "max_model_len", "enforce_eager", "sleep_mode",
    })

    backend: str = "auto"
    vllm_mode: str = "colocate"
    dtype: str = "auto"
    lora_mode: str = "auto"
    max_lora_rank: int | None = None
    server_base_url: tuple[str, ...] = ()  # one or more servers (a text is taken as comma-separated URLs)
    server_host: str | None = None  # None (and no port): a Unix socket in a private folder, no TCP at all
    server_port: int | None = None
    server_allow_remote: bool = False
    server_api_key_env: str | None = None
    server_allow_insecure_key: bool = False
    server_devices: tuple[int, ...] = ()
    server_pass_env: tuple[str, ...] = ()
    server_timeout: float = 300.0
    request_timeout: float = 1800.0
    tensor_parallel_size: int = 1
    colocate_ranks: str = "all"
    gpu_memory_utilization: float | None = None  # None: GPU_SHARE, or GPU_SHARE_SLEEPING when the engine sleeps
    cpu_kv_cache_gb: int = 4
    max_model_len: int | None = None  # None: what the run needs (`choice.fit_max_model_len`)
    enforce_eager: bool | None = None
    quantization: str = "auto"  # 'auto', 'none', or a method of the installed vLLM's registry (checked in choice.py)
    sleep_mode: bool = True  # the colocated engine on CUDA sleeps while the model trains

    def __post_init__(self):
        # One URL as text (the Python API, a YAML scalar) or a comma-separated list of them: the tuple of URLs.
        urls = self.server_base_url
        if isinstance(urls, str):
            urls = (urls,)
        if isinstance(urls, (list, tuple)) and all(isinstance(u, str) for u in urls):
            object.__setattr__(self, "server_base_url", split_urls(urls))
        super().__post_init__()

    def _check_server(self) -> None:
        """Server mode: where the servers are, and nothing that would leak a secret or open the server to others."""
        for url in self.server_base_url:
            shown = redact_url(url)
            parts = urlsplit(url) if url.startswith(("http://", "https://")) else None
            if url.startswith("unix:") and url[len("unix:"):].startswith("/"):
                continue
            if parts is None or not parts.hostname:
                raise self.field_error(
                    "server_base_url", "must be http(s) URLs such as 'http://10.0.0.2:8000' (several: a list, or "
                    f"comma-separated), or 'unix:/path/to/vllm.sock' for a server on a Unix socket; got {shown!r}."
                )
            if "@" in parts.netloc:
                raise self.field_error(
                    "server_base_url", f"holds credentials ({shown!r}): a user or password in a URL ends up in logs "
                    "and saved configs. Remove it, and give the server's API key through `vllm_server_api_key_env` "
                    "(the name of an environment variable holding it)."
                )
            if parts.query or parts.fragment:
                raise self.field_error(
                    "server_base_url", f"must be the server's base URL, without a query or fragment; got {shown!r}."
                )
        if len(set(self.server_base_url)) != len(self.server_base_url):
            raise self.field_error(
                "server_base_url", f"names a server twice ({[redact_url(u) for u in self.server_base_url]}): each "
                "server answers its own slice of the prompts, so give each once."
            )
        if self.server_host is not None and not self.server_host.strip():
            raise self.field_error("server_host", "must be an address, or unset for a private Unix socket; got ''.")
        if self.server_host is not None and not is_loopback(self.server_host) and not self.server_allow_remote:
            raise self.field_error(
                "server_host", f"is {self.server_host!r}, which other machines can reach: the server's weight-loading "
                "routes (`/collective_rpc`, `/v1/load_lora_adapter`) would be open to them, and vLLM's dev routes have "
                "no authentication. Leave it unset (a private Unix socket) or use 127.0.0.1; to serve other machines "
                "anyway set `vllm_server_allow_remote=True` as well."
            )
        if self.server_api_key_env is not None and not ENV_NAME.fullmatch(self.server_api_key_env):
            raise self.field_error(
                "server_api_key_env", f"must be the name of an environment variable (e.g. 'VLLM_API_KEY'); got "
                f"{self.server_api_key_env!r}."
            )
        insecure = [u for u in self.server_base_url if u.startswith("http://") and not key_may_travel(u)]
        if self.server_api_key_env and insecure and not self.server_allow_insecure_key:
            raise self.field_error(
                "server_base_url", f"is plain http to {host_of(insecure[0])}, which is not this machine: the key in "
                f"${self.server_api_key_env} (`vllm_server_api_key_env`) would cross the network unencrypted. Use an "
                "https:// URL, an SSH tunnel to a loopback port or a Unix socket, unset `vllm_server_api_key_env`, or "
                "set `vllm_server_allow_insecure_key=True` (a network you trust)."
            )
        if any(d < 0 for d in self.server_devices) or len(set(self.server_devices)) != len(self.server_devices):
            raise self.field_error(
                "server_devices", f"must be distinct CUDA device indices (0, 1, ...); got {list(self.server_devices)}."
            )
        if self.server_devices and len(self.server_devices) < self.tensor_parallel_size:
            raise self.field_error(
                "server_devices", f"gives {len(self.server_devices)} device(s) for a server that splits the model over "
                f"`vllm_tensor_parallel_size`={self.tensor_parallel_size}: give at least that many."
            )
        for name in self.server_pass_env:
            if not ENV_NAME.fullmatch(name):
                raise self.field_error("server_pass_env", f"must be names of environment variables; got {name!r}.")

    def check(self) -> None:
        """Reject impossible values, naming the `SOFTConfig` field and the fix. Nothing is imported or started."""
        for attr, choices in (
            ("backend", BACKENDS),
            ("vllm_mode", VLLM_MODES),
            ("dtype", VLLM_DTYPES),
            ("lora_mode", LORA_MODES),
            ("colocate_ranks", COLOCATE_RANKS),
        ):
            self.check_choice(attr, choices)
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise self.field_error(
                "max_lora_rank", f"must be one of {list(VLLM_LORA_RANKS)} (the ranks vLLM accepts); got "
                f"{self.max_lora_rank}. Leave it unset to use the smallest one that holds the LoRA rank."
            )
        self._check_server()
        if self.server_port is not None and not 0 < self.server_port < 65536:
            raise self.field_error(
                "server_port", f"must be a TCP port (1-65535), or unset to pick a free one; got {self.server_port}."
            )
        for attr in ("server_timeout", "request_timeout"):
            if getattr(self, attr) <= 0:
                raise self.field_error(attr, f"must be a positive number of seconds; got {getattr(self, attr)}.")
        if self.tensor_parallel_size < 1:
            raise self.field_error("tensor_parallel_size", f"must be >= 1; got {self.tensor_parallel_size}.")
        processes = launched_processes()
        if self.per_rank_engines(processes) and processes % self.tensor_parallel_size:
            raise self.field_error(
                "tensor_parallel_size", f"must divide the number of processes ({processes}): with "
                "`vllm_colocate_ranks='all'` each group of that many ranks shares one vLLM engine; got "
                f"{self.tensor_parallel_size}. Use a divisor of {processes}, or `vllm_colocate_ranks='main'` for one "
                "engine in the main process."
            )
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise self.field_error("gpu_memory_utilization", f"must be in (0, 1]; got {self.gpu_memory_utilization}.")
        if self.cpu_kv_cache_gb < 1:
            raise self.field_error("cpu_kv_cache_gb", f"must be a whole number of GiB >= 1; got {self.cpu_kv_cache_gb}.")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise self.field_error(
                "max_model_len", f"must be >= 16 tokens, or unset for what the run needs; got {self.max_model_len}."
            )
        if not QUANTIZATION_NAME.fullmatch(self.quantization):
            raise self.field_error(
                "quantization", "must be 'auto' (bitsandbytes for a 4-bit base where the installed vLLM has it), "
                "'none', or the name of a quantization method of the installed vLLM such as 'fp8' (lower case); "
                f"got {self.quantization!r}."
            )

    def gpu_share(self, sleeps: bool) -> float:
        """The fraction of the GPU the engine takes while awake: `vllm_gpu_memory_utilization`, or the default for
        an engine that sleeps while the model trains (it then shares the GPU only with what training keeps resident:
        weights and optimizer state, not activations) or one that stays awake beside training."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return GPU_SHARE_SLEEPING if sleeps else GPU_SHARE

    def metric_names(self) -> set[str]:
        return {SYNC_METRIC}

    def per_rank_engines(self, processes: int) -> bool:
        """Whether a colocated vLLM engine runs on every rank (or tensor-parallel group) rather than the main one."""
        return self.backend != "hf" and self.vllm_mode == "colocate" and self.colocate_ranks == "all" and processes > 1

    @property
    def external_server(self) -> bool:
        """A server somebody else runs, reached at `vllm_server_base_url`; trl-soft starts none."""
        return self.vllm_mode == "server" and bool(self.server_base_url)

    @property
    def server_over_tcp(self) -> bool:
        """Whether the server trl-soft starts listens on TCP (asked for with a host or a port) instead of a Unix
        socket in a private folder."""
        return self.server_host is not None or self.server_port is not None


def launched_processes() -> int:
    """The number of processes the launcher started (`accelerate launch` and torchrun set WORLD_SIZE): known before
    any process group or model exists, so the checks can use it."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def split_urls(urls) -> tuple[str, ...]:
    """Server URLs from a list whose items may each hold several, comma-separated; a trailing '/' is dropped."""
    return tuple(part.strip().rstrip("/") for item in urls for part in item.split(",") if part.strip())


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
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def smallest_lora_rank(rank: int) -> int | None:
    """The smallest rank vLLM accepts that holds an adapter of `rank`, or None if none does."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


