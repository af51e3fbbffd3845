"""`vllm_mode='server'`: generation through an OpenAI-compatible vLLM server.

Either trl-soft starts the server itself (`ManagedVLLMServer`: a `vllm serve` subprocess on a free or given port,
health-checked, logging to `output_dir/vllm_server.log`, stopped on exit, on Ctrl-C and on errors; it also dies with
the training process if that is killed, through the kernel's parent-death signal), or it talks to a server somebody
runs at `vllm_server_base_url`, for example on a separate inference machine that sees the output folder.

Each round's weights reach the server through its runtime APIs, from the folder the round was saved to:
- a LoRA adapter: `POST /v1/load_lora_adapter` (the server needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and
  `--enable-lora --max-lora-rank R`), and requests name the adapter;
- full or merged weights: `POST /collective_rpc` with `reload_weights` and the folder, then `/reset_prefix_cache`
  (the server needs `VLLM_SERVER_DEV_MODE=1`).
A managed server is started with all of that. Every prompt is its own request with its own seed, so answers do not
depend on how the server batches them, and equal those of the colocated engine with the same settings.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..generation import GenerationResult, GenerationSettings
from ..threads import map_in_flight
from .base import EngineError, EngineWeights, StopRule, encode_prompts, prompt_seed, result_from_vllm, sampling_fields
from .choice import EngineChoice
from .settings import EngineSettings
from .vllm_local import engine_arguments, engine_environment
from .weights import check_adapter_engine_weights, reload_folder

SERVED_NAME = "soft-base"
MAX_IN_FLIGHT = 128  # concurrent requests; the server batches them
RESUME_HINT = "Rounds already completed are kept in the output folder; rerun with `--resume` to continue."


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class ManagedVLLMServer:
    """A `vllm serve` subprocess that lives exactly as long as it is needed."""

    def __init__(self, choice: EngineChoice, settings: EngineSettings, log_path: Path, seed: int):
        host = settings.server_host
        if settings.server_port is not None:
            if not port_is_free(host, settings.server_port):
                raise EngineError(
                    f"`vllm_server_port`: port {settings.server_port} on {host} is already in use. Choose another "
                    "port, leave it unset to take a free one, or point `vllm_server_base_url` at the server that "
                    "runs there."
                )
            port = settings.server_port
        else:
            port = free_port(host)
        self.url = f"http://{host}:{port}"
        self.log_path = Path(log_path)
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", choice.base, "--served-model-name", SERVED_NAME,
            "--host", host, "--port", str(port), "--dtype", choice.dtype, "--seed", str(seed),
            "--tensor-parallel-size", str(settings.tensor_parallel_size),
            "--generation-config", "vllm",  # no defaults from the model's generation_config.json
        ]
        for name, value in engine_arguments(settings, choice.on_cuda).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                command.append(flag if value else f"--no-{flag[2:]}")
            else:
                command += [flag, str(value)]
        if settings.max_model_len is not None:
            command += ["--max-model-len", str(settings.max_model_len)]
        if choice.quantization:
            command += ["--quantization", choice.quantization]
        if choice.lora_mode == "adapter":
            command += ["--enable-lora", "--max-lora-rank", str(choice.max_lora_rank), "--max-loras", "1"]
        env = {
            **os.environ,
            **engine_environment(settings, choice.on_cuda),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_SERVER_DEV_MODE": "1",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n==== trl-soft starts: {' '.join(command)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        started = time.perf_counter()
        try:
            self._wait_until_healthy(settings.server_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started

    def _wait_until_healthy(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EngineError(
                    f"The vLLM server trl-soft started exited with code {code} before it was ready. The end of its "
                    f"log ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(1.0)
        raise EngineError(
            f"The vLLM server at {self.url} did not become ready within `vllm_server_timeout`={timeout:g} s. Raise "
            f"it, or read the log ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def exit_code(self, wait: float = 0.0) -> int | None:
        """The server's exit code, or None while it runs (waiting up to `wait` seconds for it to end)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=wait)
        return self.process.poll()

    def note(self, text: str) -> None:
        """A line of trl-soft's own in the server's log (which weights it serves from when)."""
        if not self._log.closed:
            self._log.write(f"==== trl-soft: {text}\n".encode())
            self._log.flush()

    def stop(self) -> None:
        """SIGTERM to the server's whole process group, SIGKILL if it has not gone after 30 s; returns when no process
        of the group is left (the engine processes included)."""
        process = getattr(self, "process", None)
        if process is not None:
            if process.poll() is None:
                for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                    _signal_group(process.pid, sig)
                    try:
                        process.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            _signal_group(process.pid, signal.SIGKILL)  # engine processes the server may have left behind
            deadline = time.monotonic() + 15
            while group_members(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
        atexit.unregister(self.stop)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies are dead; reaping them is their parent's business)."""
    import psutil

    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
    return members


class VLLMServerEngine:
    """Generates through a vLLM server's `/v1/completions`, one request per prompt, many in flight."""

    name = "vllm-server"

    def __init__(
        self,
        choice: EngineChoice,
        settings: EngineSettings,
        tokenizer: PreTrainedTokenizerBase,
        work_dir: Path,
        seed: int,
        log_path: Path,
    ):
        import requests

        self.tokenizer = tokenizer
        self.dtype = choice.dtype
        self.lora_mode = choice.lora_mode
        self.work_dir = Path(work_dir)
        self.request_timeout = settings.request_timeout
        self.current = EngineWeights(base=choice.base)
        self.server: ManagedVLLMServer | None = None
        self.session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_IN_FLIGHT)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)
        started = time.perf_counter()
        if settings.server_base_url is None:
            self.server = ManagedVLLMServer(choice, settings, log_path, seed)
            self.url, self.base_name = self.server.url, SERVED_NAME
        else:
            self.url = settings.server_base_url.rstrip("/")
            self.base_name = self._served_base_model()
        self.model_name = self.base_name
        self.start_seconds = time.perf_counter() - started

    # ---- talking to the server ------------------------------------------------------------------------------------
    def _failure(self, what: str, err: BaseException | str) -> EngineError:
        where = f"the vLLM server at {self.url}"
        if self.server is not None:
            code = self.server.exit_code(wait=3.0)  # a dead server drops its connections before it can be reaped
            state = f"it exited with code {code}" if code is not None else "it is still running"
            return EngineError(
                f"{what} failed: {where} stopped answering ({err}); {state}. The end of its log "
                f"({self.server.log_path}):\n{log_tail(self.server.log_path)}\n{RESUME_HINT}"
            )
        return EngineError(
            f"{what} failed: {where} (`vllm_server_base_url`) does not answer ({err}). Check that it runs and that "
            f"this machine reaches it. {RESUME_HINT}"
        )

    def _post(self, path: str, body: dict[str, Any], what: str, timeout: float | None = None) -> Any:
        import requests

        try:
            response = self.session.post(f"{self.url}{path}", json=body, timeout=(10, timeout or self.request_timeout))
        except requests.RequestException as err:
            raise self._failure(what, err) from err
        if response.status_code == 404 and path in ("/v1/load_lora_adapter", "/collective_rpc", "/reset_prefix_cache"):
            raise EngineError(self._missing_api(path))
        if response.status_code >= 400:
            if response.status_code >= 500:
                raise self._failure(what, f"HTTP {response.status_code}: {response.text[:300]}")
            raise EngineError(f"{what}: the vLLM server at {self.url} answered HTTP {response.status_code}: {response.text[:500]}")
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else None

    def _missing_api(self, path: str) -> str:
        if path == "/v1/load_lora_adapter":
            need = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and `--enable-lora --max-lora-rank R`"
        else:
            need = "VLLM_SERVER_DEV_MODE=1"
        return (
            f"The vLLM server at {self.url} has no `{path}` endpoint, which trl-soft needs to give it each round's "
            f"weights. Start it with {need} (docs/scaling.md has the command), or leave `vllm_server_base_url` unset "
            "so that trl-soft starts its own."
        )

    def _served_base_model(self) -> str:
        import requests

        try:
            response = self.session.get(f"{self.url}/v1/models", timeout=10)
            response.raise_for_status()
            models = response.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as err:
            raise EngineError(
                f"`vllm_server_base_url`: no vLLM server answers at {self.url} ({err}). Start one (docs/scaling.md), "
                "fix the URL, or leave it unset so that trl-soft starts its own server."
            ) from err
        bases = [m["id"] for m in models if not m.get("parent")]
        if not bases:
            raise EngineError(f"`vllm_server_base_url`: the server at {self.url} serves no base model ({models}).")
        return bases[0]

    # ---- the engine interface -------------------------------------------------------------------------------------
    def load(self, weights: EngineWeights, model=None) -> float:
        if weights == self.current:
            return 0.0
        started = time.perf_counter()
        previous = self.model_name
        if self.lora_mode == "adapter":
            check_adapter_engine_weights(weights)
            self.model_name = self.base_name
            if weights.kind == "adapter":
                name = f"{weights.tag}-{secrets.token_hex(4)}"  # unique: a shared server may hold other runs' rounds
                self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": weights.folder},
                           f"Loading adapter {weights.tag}")
                self.model_name = name
            if previous != self.base_name and previous != self.model_name:
                with contextlib.suppress(EngineError):  # only memory is at stake
                    self._post("/v1/unload_lora_adapter", {"lora_name": previous}, f"Unloading adapter {previous}")
        else:
            path = reload_folder(weights, model, self.work_dir, self.dtype)
            self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}},
                       f"Reloading weights from {path}")
            self._post("/reset_prefix_cache", {}, "Resetting the prefix cache")
        self.current = weights
        if self.server is not None:
            self.server.note(f"now serving {weights.tag} ({weights.kind} weights from {weights.path})")
        return time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        if not prompts:
            return []
        stop = StopRule.build(self.tokenizer, settings.stop_strings)
        encoded = encode_prompts(self.tokenizer, prompts)

        def one(index: int) -> GenerationResult:
            body = {
                "model": self.model_name,
                "prompt": encoded[index],
                "return_token_ids": True,
                **sampling_fields(settings, stop, prompt_seed(settings.seed, index)),
            }
            choice = self._post("/v1/completions", body, desc)["choices"][0]
            return result_from_vllm(choice["text"], choice.get("token_ids") or [], choice.get("finish_reason"), stop)

        return map_in_flight(one, len(prompts), MAX_IN_FLIGHT, desc, "prompt")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.session.close()

