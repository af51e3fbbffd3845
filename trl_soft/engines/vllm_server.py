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

The parts: `server_process.py` (the server trl-soft starts, private to the run), `endpoint.py` (HTTP over TCP or a
Unix socket), `ports.py`; this module is the engine that generates through them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..distributed import even_slices
from ..errors import EngineError, ServerUnreachable
from ..generation import GenerationResult, GenerationSettings
from ..security import key_may_travel
from ..threads import map_in_flight
from .base import EngineWeights, StopRule, encode_prompts, prompt_seed, result_from_vllm, sampling_fields
from .choice import EngineChoice
from .endpoint import Endpoint
from .server_process import RESUME_HINT, SERVED_NAME, ManagedVLLMServer, log_tail
from .settings import EngineSettings
from .weights import check_adapter_engine_weights, reload_folder

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 128  # concurrent requests over all servers; each server batches its own


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
