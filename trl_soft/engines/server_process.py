"""The vLLM server trl-soft starts and supervises (`ManagedVLLMServer`): a `vllm serve` subprocess, health-checked,
logging to `output_dir/vllm_server.log`, stopped on exit, on Ctrl-C and on errors, and killed with the training
process through the kernel's parent-death signal; its process group and its allow-listed environment.

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
from pathlib import Path

import psutil

from ..errors import EngineError, ServerUnreachable
from ..security import is_loopback
from ..state import open_appending
from .choice import EngineChoice
from .endpoint import Endpoint
from .ports import free_port, listen_address, port_is_free
from .settings import EngineSettings
from .vllm_local import engine_arguments, engine_environment

logger = logging.getLogger(__name__)

SERVED_NAME = "soft-base"
RESUME_HINT = "Rounds already completed are kept in the output folder; rerun with `--resume` to continue."
SOCKET_NAME = "vllm.sock"
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


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
