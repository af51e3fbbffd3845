"""`vllm_mode='server'`: generation through OpenAI-compatible vLLM servers.

Either trl-soft starts the server itself (`ManagedVLLMServer`: a `vllm serve` subprocess, health-checked, logging to
`output_dir/vllm_server.log`, stopped on exit, on Ctrl-C and on errors; it also dies with the training process if that
is killed, through the kernel's parent-death signal), or it talks to servers somebody runs at `vllm_server_base_url`
(one or several: each answers a contiguous slice of the prompts), for example on inference machines that see the
output folder.

Each round's weights reach a server through its runtime APIs, from the folder the round was saved to:
- a LoRA adapter: `POST /v1/load_lora_adapter` on every server (the server needs
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora --max-lora-rank R`), and requests name the adapter;
- full or merged weights: `POST /collective_rpc` with `reload_weights` and the folder, then `/reset_prefix_cache`
  (the server needs `VLLM_SERVER_DEV_MODE=1`).
Every prompt is its own request with its own seed (by its index in the call, whichever server answers it), so answers
depend neither on how a server batches them nor on how many servers share them, and equal those of the colocated
engine with the same settings.

A server trl-soft starts is private. vLLM's dev routes (`/collective_rpc` calls worker methods by name: it can write
or load model files anywhere) and its runtime LoRA routes have no authentication of their own, so:
- by default it listens on no TCP port: a Unix socket in a folder made for the run with mode 0700 (only this user can
  open it, and nobody else can bind it first); TCP only when `vllm_server_host`/`vllm_server_port` ask for it, and an
  address other machines reach only with `vllm_server_allow_remote`;
- it turns on only the routes the run needs: dev mode for full or merged weights, runtime LoRA for adapters;
- over TCP it gets a random API key (through its environment, which other users cannot read) and, before anything is
  sent to the port, trl-soft checks that the socket listening there belongs to the server it started: a process that
  took the port first is reported and never sent a prompt or the key;
- it inherits only an allow-list of the environment (`server_environment`): no tokens or keys;
- it runs on `vllm_server_devices` when given (its CUDA_VISIBLE_DEVICES) instead of beside rank 0 on GPU 0.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import torch
from transformers import PreTrainedTokenizerBase

from ..distributed import even_slices
from ..errors import EngineError, ServerUnreachable
from ..generation import GenerationResult, GenerationSettings
from ..security import is_loopback, key_may_travel, redact_url
from ..state import open_appending
from ..threads import map_in_flight
from .base import EngineWeights, StopRule, encode_prompts, prompt_seed, result_from_vllm, sampling_fields
from .choice import EngineChoice
from .settings import EngineSettings
from .vllm_local import engine_arguments, engine_environment
from .weights import check_adapter_engine_weights, reload_folder

logger = logging.getLogger(__name__)

SERVED_NAME = "soft-base"
MAX_IN_FLIGHT = 128  # concurrent requests over all servers; each server batches its own
RESUME_HINT = "Rounds already completed are kept in the output folder; rerun with `--resume` to continue."
SOCKET_NAME = "vllm.sock"
CONNECT_TIMEOUT = 10.0
# The environment a managed server inherits: what Python, vLLM, torch and the accelerator libraries read. Anything
# else (HF_TOKEN, OPENAI_API_KEY, a judge's key, cloud credentials, LD_PRELOAD, PYTHONPATH) is not passed unless
# named in `vllm_server_pass_env`; a name that looks like a secret is dropped even when its prefix is allowed.
PASSED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "XDG_CACHE_HOME",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE",
    "DO_NOT_TRACK", "XDG_CONFIG_HOME",  # the user's telemetry opt-outs (with VLLM_NO_USAGE_STATS, VLLM_CONFIG_ROOT)
})
PASSED_PREFIXES = ("LC_", "VLLM_", "OMP_", "MKL_", "KMP_", "CUDA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "TRITON_",
                   "PYTORCH_", "TRL_SOFT_")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)


def listen_address(host: str) -> str:
    """The address a name stands for, as the listening socket reports it (`localhost` -> 127.0.0.1)."""
    bare = host.strip("[]")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(bare))
    if is_loopback(bare):
        return "::1" if bare.lower().startswith("ip6-") else "127.0.0.1"
    try:
        return socket.gethostbyname(bare)
    except OSError as err:
        raise EngineError(f"`vllm_server_host`: {host!r} does not resolve to an address ({err}).") from None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
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


# ---- talking HTTP over TCP or a Unix socket ----------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(min(self.timeout, CONNECT_TIMEOUT))
        self.sock.connect(self.socket_path)
        self.sock.settimeout(self.timeout)


class Endpoint:
    """One server: an http(s) URL or 'unix:/path/to.sock', with the API key to send (if any). One connection per
    request (standard library only), so any number of threads can use it at once."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url, self.api_key = url, api_key
        self.label = redact_url(url)
        if url.startswith("unix:"):
            self.socket_path: str | None = url[len("unix:"):]
            self.prefix = ""
        else:
            parts = urlsplit(url)
            self.socket_path = None
            self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
            self.prefix = parts.path.rstrip("/")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixHTTPConnection(self.socket_path, timeout)
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0, auth: bool = True
    ) -> tuple[int, bytes, str]:
        """(status, body, content type); `ServerUnreachable` when no answer comes."""
        payload = json.dumps(body).encode() if body is not None else b""
        host = "localhost" if self.socket_path is not None else f"{self.host}:{self.port}" if self.port else self.host
        headers = {"Host": host, "Connection": "close", "Content-Length": str(len(payload))}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        head = f"{method} {self.prefix + path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        connection = self._connection(timeout)
        try:
            connection.connect()
            try:  # head and body in one write: a server may answer (401, 404) and close before reading a second one
                connection.sock.sendall(head.encode() + b"\r\n" + payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered before reading everything: its answer is still to be read
            response = http.client.HTTPResponse(connection.sock, method=method)
            response.begin()
            return response.status, response.read(), response.getheader("Content-Type") or ""
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnreachable(f"{type(err).__name__}: {err}") from err
        finally:
            connection.close()

    def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The server's `/v1/models` list (`ServerUnreachable`, or `EngineError` for an answer that is not one)."""
        status, data, _ = self.request("GET", "/v1/models", timeout=timeout)
        if status in (401, 403):
            raise EngineError(
                f"`vllm_server_api_key_env`: the vLLM server at {self.label} refuses the request (HTTP {status}): "
                "set `vllm_server_api_key_env` to the name of the environment variable holding its API key."
            )
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            return list(json.loads(data)["data"])
        except (ValueError, KeyError, TypeError) as err:
            raise EngineError(
                f"`vllm_server_base_url`: {self.label} does not answer like a vLLM server ({err})."
            ) from None


def server_api_key(settings: EngineSettings) -> str | None:
    """The external servers' API key, read from the variable `vllm_server_api_key_env` names (never stored)."""
    if settings.server_api_key_env is None:
        return None
    key = os.environ.get(settings.server_api_key_env, "")
    if not key:
        raise EngineError(
            f"`vllm_server_api_key_env`: the environment variable {settings.server_api_key_env} is not set (or "
            "empty). Export the servers' API key in it, or unset `vllm_server_api_key_env` for servers without one."
        )
    return key


def check_servers(settings: EngineSettings, on_cuda: bool) -> None:
    """What can be checked about the servers before any model loads: the devices a managed server is given exist on
    this machine; every external server answers (a short `/v1/models` request, with the API key if one is named)."""
    if settings.vllm_mode != "server":
        return
    if settings.server_devices and not settings.external_server:
        count = torch.cuda.device_count() if on_cuda else 0
        missing = [d for d in settings.server_devices if d >= count]
        if missing:
            where = f"this machine has {count} CUDA device(s)" if count else "this run has no CUDA device (CPU)"
            raise ValueError(
                f"`vllm_server_devices` names device(s) {missing}, but {where}. Give indices below {count}"
                + (", or leave it unset." if count else ": leave it unset on a CPU.")
            )
    if not settings.external_server:
        return
    try:
        key = server_api_key(settings)
    except EngineError as err:
        raise ValueError(str(err)) from None
    for url in settings.server_base_url:
        endpoint = Endpoint(url, key)
        if key and url.startswith("http://") and not key_may_travel(url):  # allowed by `vllm_server_allow_insecure_key`
            logger.warning(f"the API key of `vllm_server_api_key_env` goes to {endpoint.label} unencrypted (http to "
                           "another machine, `vllm_server_allow_insecure_key`).")
        try:
            endpoint.models(timeout=5.0)
        except ServerUnreachable as err:
            raise ValueError(
                f"`vllm_server_base_url`: no vLLM server answers at {endpoint.label} ({err}). Start it "
                "(docs/scaling.md), fix the URL, or leave `vllm_server_base_url` unset so that trl-soft starts its "
                "own server."
            ) from None
        except EngineError as err:
            raise ValueError(str(err)) from None


def server_environment(
    settings: EngineSettings, on_cuda: bool, private_dir: Path, api_key: str | None, lora_mode: str | None
) -> dict[str, str]:
    """The managed server's whole environment: the allow-list (module constants) plus `vllm_server_pass_env`, the
    engine's own variables, the routes this run needs, its devices and its API key."""
    env = {
        name: value for name, value in os.environ.items()
        if (name in PASSED_ENV or name.startswith(PASSED_PREFIXES)) and not SECRET_NAME.search(name)
    }
    env.update({name: os.environ[name] for name in settings.server_pass_env if name in os.environ})
    env.pop("VLLM_API_KEY", None)
    if settings.server_api_key_env:
        env.pop(settings.server_api_key_env, None)
    for name in ("VLLM_SERVER_DEV_MODE", "VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        env.pop(name, None)  # set below, as this run needs them, whatever the user's shell says
    env.update(engine_environment(settings, on_cuda))
    env["VLLM_RPC_BASE_PATH"] = str(private_dir)  # the engine's own IPC sockets: in the private folder too
    if lora_mode == "adapter":
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    else:
        env["VLLM_SERVER_DEV_MODE"] = "1"  # `/collective_rpc` reload_weights, `/reset_prefix_cache`
    if api_key is not None:
        env["VLLM_API_KEY"] = api_key
    if settings.server_devices:
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        chosen = [visible[d] if d < len(visible) else str(d) for d in settings.server_devices]  # the parent's indices
        env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    return env


class ManagedVLLMServer:
    """A `vllm serve` subprocess that lives exactly as long as it is needed, reachable by this run only. Start it from
    a thread that outlives it: the kernel's parent-death signal follows the thread that started it."""

    def __init__(self, choice: EngineChoice, settings: EngineSettings, log_path: Path, seed: int):
        self.log_path = Path(log_path)
        self.tcp = settings.server_over_tcp
        self.private_dir: Path | None = None
        self.api_key: str | None = None
        if self.tcp:
            host = listen_address(settings.server_host or "127.0.0.1")
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
            self.host, self.port = host, port
            self.api_key = secrets.token_urlsafe(32)  # for /v1/*; the child reads it from its environment only
            self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            listen = ["--host", host, "--port", str(port)]
        self.private_dir = Path(tempfile.mkdtemp(prefix="trl-soft-vllm-"))  # mode 0700, ours: the IPC sockets too
        if not self.tcp:
            path = self.private_dir / SOCKET_NAME
            if len(os.fsencode(path)) > 100:
                self._remove_private_dir()
                raise EngineError(
                    f"The server's Unix socket path {path} is too long for the system (over 100 bytes): set TMPDIR to "
                    "a shorter folder, or give `vllm_server_port` for a loopback TCP port."
                )
            self.url = f"unix:{path}"
            listen = ["--uds", str(path)]
        self.endpoint = Endpoint(self.url, self.api_key)
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", choice.base, "--served-model-name", SERVED_NAME, *listen,
            "--dtype", choice.dtype, "--seed", str(seed),
            "--tensor-parallel-size", str(settings.tensor_parallel_size),
            "--generation-config", "vllm",  # no defaults from the model's generation_config.json
        ]
        for name, value in engine_arguments(settings, choice.on_cuda, share=choice.gpu_memory_utilization).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                command.append(flag if value else f"--no-{flag[2:]}")
            else:
                command += [flag, str(value)]
        max_model_len = getattr(choice, "max_model_len", None) or settings.max_model_len
        if max_model_len is not None:
            command += ["--max-model-len", str(max_model_len)]
        if choice.quantization:
            command += ["--quantization", choice.quantization]
        if choice.lora_mode == "adapter":
            command += ["--enable-lora", "--max-lora-rank", str(choice.max_lora_rank), "--max-loras", "1"]
        env = server_environment(settings, choice.on_cuda, self.private_dir, self.api_key, choice.lora_mode)
        if self.tcp:
            routes = "its weight-loading route `/collective_rpc` has no authentication" if choice.lora_mode != "adapter" \
                else "its API key guards the /v1 routes"
            reach = "other machines" if not is_loopback(self.host) else "every user of this machine"
            logger.warning(f"the vLLM server listens on TCP {self.url}, which {reach} can reach; {routes}. Leave "
                           "`vllm_server_host`/`vllm_server_port` unset for a private Unix socket.")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open_appending(self.log_path, binary=True)  # closed in stop(); never through a link
        self._log.write(f"\n==== trl-soft starts: {' '.join(command)}\n".encode())  # no secret is on the line
        self._log.flush()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        started = time.perf_counter()
        try:
            self._wait_until_ready(settings.server_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started

    # ---- is the server that answers the one we started? -----------------------------------------------------------
    def _listens_here(self) -> bool:
        """Whether a process of the server's group holds the listening socket at (host, port)."""
        wildcard = {"0.0.0.0", "::"}
        for pid in group_members(self.process.pid):
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.port and (
                        conn.laddr.ip == self.host or conn.laddr.ip in wildcard
                    ):
                        return True
        return False

    def _port_answers(self) -> bool:
        target = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if self.host == "::" else self.host
        with contextlib.suppress(OSError), socket.create_connection((target, self.port), timeout=1.0):
            return True
        return False

    def _private_socket_ready(self) -> bool:
        """The socket is in the folder made for this run, still ours and closed to others, and is a socket."""
        folder = os.stat(self.private_dir)
        if folder.st_uid != os.getuid() or stat.S_IMODE(folder.st_mode) & 0o077:
            raise EngineError(f"The server's private folder {self.private_dir} was opened to other users; not used.")
        path = self.url[len("unix:"):]
        return os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EngineError(
                    f"The vLLM server trl-soft started exited with code {code} before it was ready. The end of its "
                    f"log ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            if self.tcp:
                ours = self._listens_here()
                if not ours and self._port_answers() and not self._listens_here():
                    raise EngineError(
                        f"Another process answers at {self.url}, the address of the vLLM server trl-soft is starting "
                        "(it took the port first): it is not used, and was sent nothing. Leave "
                        "`vllm_server_host`/`vllm_server_port` unset for a private Unix socket, or choose another port."
                    )
                ready = ours
            else:
                ready = self._private_socket_ready()
            if ready:
                with contextlib.suppress(ServerUnreachable):
                    status, _, _ = self.endpoint.request("GET", "/health", timeout=2.0)
                    if status == 200:
                        served = [m.get("id") for m in self.endpoint.models()]
                        if SERVED_NAME not in served:
                            raise EngineError(f"The server at {self.url} serves {served}, not {SERVED_NAME!r}.")
                        return
            time.sleep(1.0)
        raise EngineError(
            f"The vLLM server at {self.url} did not become ready within `vllm_server_timeout`={timeout:g} s. Raise "
            f"it, or read the log ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def check_still_ours(self) -> None:
        """Before each phase that talks to the server: the process trl-soft started is alive and (over TCP) still the
        one listening at its port, or its private socket is still in place; otherwise `EngineError`, and nothing is
        sent (a process that took the port after the server died would get the key, the prompts and
        `/collective_rpc`, and could answer anything)."""
        code = self.process.poll()
        if code is not None:
            raise EngineError(
                f"The vLLM server trl-soft started exited with code {code}: nothing more is sent to {self.url}. The "
                f"end of its log ({self.log_path}):\n{log_tail(self.log_path)}\n{RESUME_HINT}"
            )
        if self.tcp:
            ours = self._listens_here()
        else:
            try:
                ours = self.private_dir is not None and self._private_socket_ready()
            except OSError:
                ours = False
        if not ours:
            raise EngineError(
                f"The vLLM server trl-soft started no longer listens at {self.url} (another process may hold the "
                "address now): nothing is sent there. Leave `vllm_server_host`/`vllm_server_port` unset for a private "
                f"Unix socket. {RESUME_HINT}"
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

    def _remove_private_dir(self) -> None:
        """The folder this object made (mkdtemp): its socket and the engine's IPC files, nothing else."""
        folder, self.private_dir = self.private_dir, None
        if folder is not None and folder.name.startswith("trl-soft-vllm-"):
            shutil.rmtree(folder, ignore_errors=True)

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
        self._remove_private_dir()
        atexit.unregister(self.stop)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies are dead; reaping them is their parent's business)."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
    return members


class VLLMServerEngine:
    """Generates through vLLM servers' `/v1/completions`, one request per prompt, many in flight; with several
    servers each answers a contiguous slice of the prompts."""

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
        self.tokenizer = tokenizer
        self.dtype = choice.dtype
        self.lora_mode = choice.lora_mode
        self.work_dir = Path(work_dir)
        self.request_timeout = settings.request_timeout
        self.current = EngineWeights(base=choice.base)
        self.server: ManagedVLLMServer | None = None
        started = time.perf_counter()
        if not settings.external_server:
            self.server = ManagedVLLMServer(choice, settings, log_path, seed)
            self.endpoints, self.base_name = [self.server.endpoint], SERVED_NAME
        else:
            key = server_api_key(settings)
            self.endpoints = [Endpoint(url, key) for url in settings.server_base_url]
            self.base_name = self._served_base_model()
        self.url = ", ".join(e.label for e in self.endpoints)
        self.model_name = self.base_name
        self.start_seconds = time.perf_counter() - started

    # ---- talking to the servers -----------------------------------------------------------------------------------
    def _failure(self, what: str, endpoint: Endpoint, err: BaseException | str) -> EngineError:
        where = f"the vLLM server at {endpoint.label}"
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

    def _post(self, endpoint: Endpoint, path: str, body: dict[str, Any], what: str) -> Any:
        try:
            status, data, content_type = endpoint.request("POST", path, body, timeout=self.request_timeout)
        except ServerUnreachable as err:
            raise self._failure(what, endpoint, err) from err
        text = data.decode("utf-8", errors="replace")
        if status == 404 and path in ("/v1/load_lora_adapter", "/collective_rpc", "/reset_prefix_cache"):
            raise EngineError(self._missing_api(endpoint, path))
        if status in (401, 403):
            raise EngineError(
                f"{what}: the vLLM server at {endpoint.label} refuses the request (HTTP {status}): set "
                "`vllm_server_api_key_env` to the name of the environment variable holding its API key."
            )
        if status >= 500:
            raise self._failure(what, endpoint, f"HTTP {status}: {text[:300]}")
        if status >= 400:
            raise EngineError(f"{what}: the vLLM server at {endpoint.label} answered HTTP {status}: {text[:500]}")
        return json.loads(data) if data and "json" in content_type else None

    def _post_all(self, path: str, body: dict[str, Any], what: str) -> None:
        """The same request to every server (each API process keeps its own weights and adapter registry)."""
        for endpoint in self.endpoints:
            self._post(endpoint, path, body, what)

    def _missing_api(self, endpoint: Endpoint, path: str) -> str:
        if path == "/v1/load_lora_adapter":
            need = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and `--enable-lora --max-lora-rank R`"
        else:
            need = "VLLM_SERVER_DEV_MODE=1"
        return (
            f"The vLLM server at {endpoint.label} has no `{path}` endpoint, which trl-soft needs to give it each "
            f"round's weights. Start it with {need} (docs/scaling.md has the command), or leave "
            "`vllm_server_base_url` unset so that trl-soft starts its own."
        )

    def _served_base_model(self) -> str:
        names = []
        for endpoint in self.endpoints:
            try:
                models = endpoint.models()
            except ServerUnreachable as err:
                raise EngineError(
                    f"`vllm_server_base_url`: no vLLM server answers at {endpoint.label} ({err}). Start one "
                    "(docs/scaling.md), fix the URL, or leave it unset so that trl-soft starts its own server."
                ) from err
            bases = [m["id"] for m in models if not m.get("parent")]
            if not bases:
                raise EngineError(f"`vllm_server_base_url`: the server at {endpoint.label} serves no base model.")
            names.append(bases[0])
        if len(set(names)) > 1:
            served = ", ".join(f"{e.label}: {n}" for e, n in zip(self.endpoints, names))
            raise EngineError(
                f"`vllm_server_base_url`: the servers serve different models ({served}); every server must serve the "
                "same base model under the same name."
            )
        return names[0]

    # ---- the engine interface -------------------------------------------------------------------------------------
    def check_server(self) -> None:
        """The server trl-soft started is still the one at its address (`ManagedVLLMServer.check_still_ours`)."""
        if self.server is not None:
            self.server.check_still_ours()

    def load(self, weights: EngineWeights, model=None) -> float:
        if weights == self.current:
            return 0.0
        self.check_server()
        started = time.perf_counter()
        previous = self.model_name
        if self.lora_mode == "adapter":
            check_adapter_engine_weights(weights)
            self.model_name = self.base_name
            if weights.kind == "adapter":
                name = f"{weights.tag}-{secrets.token_hex(4)}"  # unique: a shared server may hold other runs' rounds
                self._post_all("/v1/load_lora_adapter", {"lora_name": name, "lora_path": weights.folder},
                               f"Loading adapter {weights.tag}")
                self.model_name = name
            if previous != self.base_name and previous != self.model_name:
                for endpoint in self.endpoints:
                    with contextlib.suppress(EngineError):  # only memory is at stake
                        self._post(endpoint, "/v1/unload_lora_adapter", {"lora_name": previous},
                                   f"Unloading adapter {previous}")
        else:
            path = reload_folder(weights, model, self.work_dir, self.dtype)
            self._post_all("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}},
                           f"Reloading weights from {path}")
            self._post_all("/reset_prefix_cache", {}, "Resetting the prefix cache")
        self.current = weights
        if self.server is not None:
            self.server.note(f"now serving {weights.tag} ({weights.kind} weights from {weights.path})")
        return time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, desc: str = "Generating"
    ) -> list[GenerationResult]:
        if not prompts:
            return []
        self.check_server()
        stop = StopRule.build(self.tokenizer, settings.stop_strings)
        encoded = encode_prompts(self.tokenizer, prompts)
        server_of = [0] * len(prompts)
        for number, part in enumerate(even_slices(len(prompts), len(self.endpoints))):
            for index in part:
                server_of[index] = number

        def one(index: int) -> GenerationResult:
            body = {
                "model": self.model_name,
                "prompt": encoded[index],
                "return_token_ids": True,
                **sampling_fields(settings, stop, prompt_seed(settings.seed, index)),  # by index: any server
            }
            answer = self._post(self.endpoints[server_of[index]], "/v1/completions", body, desc)
            choice = answer["choices"][0]
            return result_from_vllm(choice["text"], choice.get("token_ids") or [], choice.get("finish_reason"), stop)

        return map_in_flight(one, len(prompts), MAX_IN_FLIGHT, desc, "prompt")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
