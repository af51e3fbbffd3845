"""The generation engine's settings: which engine, where it runs, in what precision, and how it gets each round's weights.

Each setting is declared once below (`setting`: default, help, `SOFTConfig` field name); `SOFTConfig` gets its flat
`generation_backend` / `vllm_*` fields for the command line from there, builds one `EngineSettings` from them
(`EngineSettings.from_config`), and every check here names the `SOFTConfig` field and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import torch

from ..security import ENV_NAME, host_of, is_loopback, key_may_travel, redact_url
from ..settings import ConcernSettings, setting

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

    # Where and how long the engine runs; not what it writes.
    NOT_FINGERPRINTED = frozenset({
        "vllm_mode", "max_lora_rank", "server_base_url", "server_host", "server_port", "server_timeout",
        "server_allow_remote", "server_api_key_env", "server_allow_insecure_key", "server_devices", "server_pass_env",
        "request_timeout", "tensor_parallel_size", "colocate_ranks", "gpu_memory_utilization", "cpu_kv_cache_gb",
        "max_model_len", "enforce_eager", "sleep_mode",
    })

    backend: str = setting(
        "auto",
        "Engine that writes each round's answers and the diagnostic samples: 'auto' (default: vLLM when "
        "it is installed and can run the model here, transformers otherwise; the run prints which and why), "
        "'vllm' (insist: an error says what stands in the way) or 'hf' (transformers `generate` in the training "
        "processes, with the shared-prefix cache; also for 4-bit QLoRA on CPUs).",
        name="generation_backend",
    )
    vllm_mode: str = setting(
        "colocate",
        "With vLLM: 'colocate' (default: vLLM engines started by the training run, see `vllm_colocate_ranks`) "
        "or 'server' (an OpenAI-compatible vLLM server: started by trl-soft, or the one at "
        "`vllm_server_base_url`).",
    )
    dtype: str = setting(
        "auto",
        "vLLM's precision, independent of the training dtype: 'auto' (default: bfloat16 where the GPU or "
        "CPU computes it natively, float16 on older GPUs, float32 on CPUs without bfloat16 instructions), "
        "'bfloat16', 'float16' or 'float32'.",
        name="vllm_dtype",
    )
    lora_mode: str = setting(
        "auto",
        "How a LoRA round's weights reach vLLM: 'adapter' (the round's adapter is loaded and applied "
        "per request), 'merged' (merged into the base and reloaded in place; no LoRA kernels) or 'auto' "
        "(default: merged on CPUs, where vLLM's LoRA kernels are slow, adapter on GPUs and with 4-bit bases).",
        name="vllm_lora_mode",
    )
    max_lora_rank: int | None = setting(
        None,
        "Largest LoRA rank the vLLM engine accepts in adapter mode (one of 1, 8, 16, 32, 64, 128, 256, "
        "320, 512). Default: the smallest of those that holds the run's `lora_r`.",
        name="vllm_max_lora_rank",
    )
    # one or more servers (a text is taken as comma-separated URLs)
    server_base_url: tuple[str, ...] = setting(
        None,
        "Server mode: URL(s) of running vLLM servers (e.g. 'http://10.0.0.2:8000'; several as a list or "
        "comma-separated: each answers a contiguous slice of the prompts; 'unix:/path/vllm.sock' for a Unix "
        "socket) that must see `output_dir` at the same path. No credentials in a URL: see "
        "`vllm_server_api_key_env`. Default: trl-soft starts its own server and stops it at the end.",
        name="vllm_server_base_url",
    )
    # None (and no port): a Unix socket in a private folder, no TCP at all
    server_host: str | None = setting(
        None,
        "Server mode: TCP address the server trl-soft starts listens on. Default (with no "
        "`vllm_server_port` either): no TCP at all, a Unix socket in a folder only this user can open. A "
        "non-loopback address also needs `vllm_server_allow_remote`.",
        name="vllm_server_host",
    )
    server_port: int | None = setting(
        None,
        "Server mode: TCP port of the server trl-soft starts (on `vllm_server_host`, default 127.0.0.1). "
        "Default: a Unix socket, no port.",
        name="vllm_server_port",
    )
    server_allow_remote: bool = setting(
        False,
        "Server mode: let the server trl-soft starts listen on a non-loopback `vllm_server_host` "
        "(other machines can then reach its unauthenticated weight-loading routes; a warning is printed).",
        name="vllm_server_allow_remote",
    )
    server_api_key_env: str | None = setting(
        None,
        "Server mode: name of the environment variable holding the API key of the servers at "
        "`vllm_server_base_url` (sent as `Authorization: Bearer`, never written anywhere). Default: no key.",
        name="vllm_server_api_key_env",
    )
    server_allow_insecure_key: bool = setting(
        False,
        "Server mode: send the servers' key over plain http to a `vllm_server_base_url` that is not this "
        "machine (a network you trust). Off: such a config is refused before the run starts.",
        name="vllm_server_allow_insecure_key",
    )
    server_devices: tuple[int, ...] = setting(
        None,
        "Server mode: CUDA device indices the server trl-soft starts runs on (e.g. '2,3'; its "
        "CUDA_VISIBLE_DEVICES). Default: the devices the training process sees (the server shares GPU 0).",
        name="vllm_server_devices",
    )
    server_pass_env: tuple[str, ...] = setting(
        None,
        "Server mode: extra environment variables the server trl-soft starts inherits, by name (e.g. "
        "PYTHONPATH); it gets only an allow-list otherwise (docs/scaling.md), never keys or tokens.",
        name="vllm_server_pass_env",
    )
    server_timeout: float = setting(
        300.0, "Seconds the server trl-soft starts may take to answer its health check.",
        name="vllm_server_timeout",
    )
    request_timeout: float = setting(
        1800.0, "Server mode: seconds one generation request may take before the round fails.",
        name="vllm_request_timeout",
    )
    tensor_parallel_size: int = setting(
        1,
        "GPUs one vLLM engine splits the model over (tensor parallelism). With `vllm_colocate_ranks="
        "'all'` under several processes, groups of this many ranks share one engine, so it must divide the "
        "number of processes.",
        name="vllm_tensor_parallel_size",
    )
    colocate_ranks: str = setting(
        "all",
        "Colocate mode under several processes: 'all' (default: every process, or every group of "
        "`vllm_tensor_parallel_size` processes, runs its own engine on its own GPU and answers its slice of the "
        "prompts) or 'main' (one engine in the main process answers every prompt while the others wait; for "
        "when the GPUs cannot hold an engine each). Answers do not depend on it.",
        name="vllm_colocate_ranks",
    )
    # None: GPU_SHARE, or GPU_SHARE_SLEEPING when the engine sleeps
    gpu_memory_utilization: float | None = setting(
        None,
        "Fraction of the GPU the vLLM engine takes while awake. Default: what the memory plan leaves it "
        "beside training (docs/scaling.md, 'The memory plan'); where no plan can be made, 0.5 for a colocated "
        "engine that sleeps while the model trains (`vllm_sleep_mode`), 0.3 otherwise. Not used on CPUs (see "
        "`vllm_cpu_kv_cache_gb`). docs/scaling.md: what each GPU holds in each phase.",
        name="vllm_gpu_memory_utilization",
    )
    cpu_kv_cache_gb: int = setting(
        4, "On CPUs: GiB of memory the vLLM engine reserves for its KV cache (chosen here: 4).",
        name="vllm_cpu_kv_cache_gb",
    )
    # None: what the run needs (`choice.fit_max_model_len`)
    max_model_len: int | None = setting(
        None,
        "Longest prompt + answer the vLLM engine handles, in tokens (vLLM reserves KV-cache memory for one "
        "sequence this long). Default: what the run needs: its longest generation prompt (and the behaviour and "
        "diagnostics prompts) plus the answer, rounded up to a multiple of 256, at most the model's context. Set "
        "lower than a round's prompt plus `generation_max_new_tokens`, the run stops before any model loads.",
        name="vllm_max_model_len",
    )
    enforce_eager: bool | None = setting(
        None,
        "Run vLLM without torch.compile / CUDA graphs. Default: on for CPUs (on the 2-core development "
        "machine compiling took the engine's start from 23 s to 93 s for 1.04x the eager speed), off on GPUs.",
        name="vllm_enforce_eager",
    )
    # 'auto', 'none', or a method of the installed vLLM's registry (checked in choice.py)
    quantization: str = setting(
        "auto",
        "How the vLLM engine holds the base weights: 'auto' (default: as saved; for a 4-bit QLoRA base, "
        "bitsandbytes where the installed vLLM has it, else unquantized in `vllm_dtype`, with each round's "
        "adapter), 'none' (as saved, unquantized), or a quantization method of the installed vLLM, e.g. 'fp8' "
        "(checked against its registry before any model loads). docs/scaling.md weighs the choices.",
        name="vllm_quantization",
    )
    # the colocated engine on CUDA sleeps while the model trains
    sleep_mode: bool = setting(
        True,
        "The colocated vLLM engine on CUDA sleeps while the model trains (level 1: weights to CPU memory, "
        "with LoRA adapters; level 2: weights dropped and reloaded from the round's folder, with full or merged "
        "weights) and wakes to generate. No effect on CPUs (vLLM's CPU platform has no sleep mode) or in server "
        "mode.",
        name="vllm_sleep_mode",
    )

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


