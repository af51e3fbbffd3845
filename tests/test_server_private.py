"""The vLLM server trl-soft starts is private, and several servers share a round's prompts (issues 20 and 21).

Real vLLM servers (vLLM's CPU build) on the embedded SmolLM2-135M-Instruct, two started once for the module, both in
adapter mode: one on its default private Unix socket, one on the loopback TCP opt-in (with its per-run API key).
- the private one listens on no TCP port of its own, its socket sits in a 0700 folder, it inherited no secret from the
  environment, and in adapter mode it has no `/collective_rpc` (vLLM's unauthenticated dev route);
- given both as `vllm_server_base_url`, the prompts are spread over them in contiguous slices (counted in each
  server's access log) and the answers equal one server's, with the base model and with an adapter loaded on both;
- a process that takes the TCP port before the server binds it is detected, and sent nothing.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import stat
import threading
import time
from dataclasses import replace

import psutil
import pytest

from trl_soft.distributed import even_slices as slices
from trl_soft.engines import EngineChoice, EngineError, EngineSettings, EngineWeights, make_vllm_engine, vllm_installed
from trl_soft.engines.server_process import ManagedVLLMServer, group_members, server_environment
from trl_soft.generation import GenerationSettings

FAKE_TOKEN = "hf_not_for_the_server_123"
KEY_VAR = "TRL_SOFT_TEST_VLLM_KEY"


def test_prompts_are_spread_in_contiguous_slices():
    assert slices(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert slices(2, 2) == [range(0, 1), range(1, 2)]
    assert [len(s) for s in slices(10, 1)] == [10]


def test_the_server_environment_is_an_allow_list(monkeypatch, tmp_path):
    """No server starts: the environment a server would get, built from this one."""
    for name, value in {"HF_TOKEN": FAKE_TOKEN, "OPENAI_API_KEY": "sk-x", "VLLM_API_KEY": "mine", "LD_PRELOAD": "x.so",
                        "PYTHONPATH": "/somewhere", "TRL_SOFT_SECRET_TOKEN": "t", "OMP_NUM_THREADS": "2",
                        "VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "4,5,6"}.items():
        monkeypatch.setenv(name, value)
    adapter = server_environment(EngineSettings(server_devices=(2, 0)), False, tmp_path, None, "adapter")
    assert {"HF_TOKEN", "OPENAI_API_KEY", "VLLM_API_KEY", "LD_PRELOAD", "PYTHONPATH", "TRL_SOFT_SECRET_TOKEN",
            "VLLM_SERVER_DEV_MODE"}.isdisjoint(adapter)
    assert adapter["OMP_NUM_THREADS"] == "2" and adapter["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert adapter["CUDA_VISIBLE_DEVICES"] == "6,4"  # indices as this process sees its devices
    assert adapter["VLLM_RPC_BASE_PATH"] == str(tmp_path)
    full = server_environment(EngineSettings(server_pass_env=("PYTHONPATH",)), False, tmp_path, "k", None)
    assert full["VLLM_SERVER_DEV_MODE"] == "1" and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in full
    assert full["PYTHONPATH"] == "/somewhere" and full["VLLM_API_KEY"] == "k"


def test_credentials_in_a_server_url_are_refused_without_echoing_them():
    with pytest.raises(ValueError, match="`vllm_server_base_url`") as info:
        EngineSettings(vllm_mode="server", server_base_url="http://a:1,https://user:s3cret-pw@host:8000/v1")
    assert "s3cret" not in str(info.value) and "***@host:8000" in str(info.value)


# ---- real servers ------------------------------------------------------------------------------------------------
vllm_only = [
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_installed() and not os.environ.get("CI"), reason="vLLM is not installed"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, smol_path):
    """(private, tcp): two servers in adapter mode; HF_TOKEN is set while they start."""
    folder = tmp_path_factory.mktemp("servers")
    choice = EngineChoice("vllm", "test", "server", "float32", "adapter", max_lora_rank=8, base=smol_path)
    private = EngineSettings(vllm_mode="server", dtype="float32", cpu_kv_cache_gb=1)
    tcp = replace(private, server_host="127.0.0.1")
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = FAKE_TOKEN
    made = []
    try:  # one after the other, from this thread: a server gets the parent-death signal when its starting thread ends
        for name, settings in (("private", private), ("tcp", tcp)):
            made.append(ManagedVLLMServer(choice, settings, folder / f"{name}.log", 0))
    except BaseException:
        for server in made:
            server.stop()
        raise
    finally:
        os.environ.pop("HF_TOKEN") if old is None else os.environ.__setitem__("HF_TOKEN", old)
    try:
        yield tuple(made)
    finally:
        for server in made:
            server.stop()


def _listening(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


class TestPrivateServer:
    pytestmark = vllm_only

    def test_it_listens_on_a_unix_socket_in_a_0700_folder_and_on_no_tcp_port(self, servers):
        private, _ = servers
        path = private.url.removeprefix("unix:")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        folder = os.stat(os.path.dirname(path))
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        assert _listening(private.process.pid) == []  # the API server: no TCP at all
        # vLLM's engine worker keeps torch.distributed's (gloo) sockets, as a colocated engine does: loopback only
        for pid in group_members(private.process.pid):
            assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in _listening(pid)), _listening(pid)

    def test_it_inherited_no_secret_and_runs_only_the_routes_adapters_need(self, servers):
        private, tcp = servers
        environ = open(f"/proc/{private.process.pid}/environ", "rb").read().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "HF_TOKEN" not in names and FAKE_TOKEN.encode() not in b"\0".join(environ)
        assert "VLLM_SERVER_DEV_MODE" not in names and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in names
        body = {"method": "save_sharded_state", "kwargs": {"path": "/tmp/x"}}
        assert private.endpoint.request("POST", "/collective_rpc", body)[0] == 404
        assert tcp.endpoint.request("POST", "/collective_rpc", body)[0] == 404
        # over TCP the /v1 routes need the run's key
        assert tcp.endpoint.request("GET", "/v1/models", auth=False)[0] == 401
        assert tcp.endpoint.request("GET", "/v1/models")[0] == 200
        assert tcp.api_key not in tcp.log_path.read_text()


def _requests(server) -> int:
    return len(re.findall(r"POST /v1/completions", server.log_path.read_text(errors="replace")))


class TestTwoServers:
    pytestmark = vllm_only

    def test_prompts_are_spread_over_both_and_the_answers_are_one_servers(self, servers, tokenizer, tmp_path,
                                                                        monkeypatch, smol_path):
        private, tcp = servers
        monkeypatch.setenv(KEY_VAR, tcp.api_key)
        choice = EngineChoice("vllm", "test", "server", "float32", "adapter", max_lora_rank=8, base=smol_path)
        both = EngineSettings(vllm_mode="server", server_base_url=(private.url, tcp.url), server_api_key_env=KEY_VAR)
        one = EngineSettings(vllm_mode="server", server_base_url=(private.url,))
        prompts = [f"<|im_start|>user\nName {w}.<|im_end|>\n<|im_start|>assistant\n"
                   for w in ("a colour", "a fruit", "a planet", "an animal", "a river")]
        settings = GenerationSettings(max_new_tokens=12, temperature=0.0, seed=3)
        spread = make_vllm_engine(choice, both, tokenizer, tmp_path / "w2", seed=0)
        single = make_vllm_engine(choice, one, tokenizer, tmp_path / "w1", seed=0)
        before = _requests(private), _requests(tcp)
        base_spread = [r.text for r in spread.generate(prompts, settings)]
        time.sleep(0.5)  # the access log lines are written after the answers
        assert (_requests(private) - before[0], _requests(tcp) - before[1]) == (3, 2)
        assert base_spread == [r.text for r in single.generate(prompts, settings)]

        adapter = _random_adapter(smol_path, tmp_path / "adapter")
        weights = EngineWeights.saved(adapter, smol_path, "round_1")
        spread.load(weights)  # on both servers: each keeps its own adapter registry
        single.load(weights)
        tuned = [r.text for r in spread.generate(prompts, settings)]
        assert tuned == [r.text for r in single.generate(prompts, settings)]
        assert tuned != base_spread
        spread.close()
        single.close()
        assert private.exit_code() is None and tcp.exit_code() is None  # servers given by URL are not stopped


def _random_adapter(base: str, folder) -> str:
    """A LoRA adapter over the embedded model with random (not zero) B, so that it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(folder)
    return str(folder)


class _StandIn(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(f"GET {self.path} {self.headers.get('Authorization')}")
        body = b'{"object":"list","data":[{"id":"soft-base","parent":null}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


class TestStandIn:
    pytestmark = vllm_only

    def test_a_process_that_takes_the_tcp_port_first_is_detected_and_sent_nothing(self, tmp_path, smol_path):
        """The stand-in binds the port between trl-soft's check that it is free and the server's own bind (it waits
        for the server's log to be opened, just before the server process starts, as a racing process would)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = tmp_path / "server.log"
        holder: dict = {}

        def take_the_port():
            deadline = time.monotonic() + 60
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            holder["server"] = http.server.ThreadingHTTPServer(("127.0.0.1", port), _StandIn)
            holder["server"].serve_forever(poll_interval=0.05)

        _StandIn.seen = []
        thread = threading.Thread(target=take_the_port, daemon=True)
        thread.start()
        settings = EngineSettings(vllm_mode="server", dtype="float32", cpu_kv_cache_gb=1, server_port=port)
        choice = EngineChoice("vllm", "test", "server", "float32", base=smol_path)
        try:
            with pytest.raises(EngineError, match=r"Another process answers at http://127\.0\.0\.1:\d+.*sent nothing"):
                ManagedVLLMServer(choice, settings, log, 0)
        finally:
            if "server" in holder:
                holder["server"].shutdown()
                holder["server"].server_close()
        assert _StandIn.seen == []  # neither a prompt nor the key went to it


# ---- the server is who it was (issue 27): no vLLM needed, a real process plays the server ---------------------------
def _stand_in_server(tmp_path, port):
    """A `ManagedVLLMServer` as trl-soft holds one after a TCP start, around a real HTTP server process of its own
    session (what `ManagedVLLMServer.__init__` sets up, without vLLM)."""
    import subprocess
    import sys

    from trl_soft.engines.endpoint import Endpoint

    server = ManagedVLLMServer.__new__(ManagedVLLMServer)
    server.tcp, server.host, server.port, server.private_dir = True, "127.0.0.1", port, None
    server.url, server.api_key, server.log_path = f"http://127.0.0.1:{port}", "per-run-key", tmp_path / "server.log"
    server.endpoint = Endpoint(server.url, server.api_key)
    server.process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                      cwd=tmp_path)
    deadline = time.monotonic() + 20
    while not server._listens_here():
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    return server


def test_a_tcp_server_that_died_is_noticed_before_anything_goes_to_whoever_holds_its_port_now(tmp_path):
    from trl_soft.engines.vllm_server import VLLMServerEngine

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _stand_in_server(tmp_path, port)
    engine = VLLMServerEngine.__new__(VLLMServerEngine)
    engine.server, engine.endpoints, engine.current = server, [server.endpoint], EngineWeights(base="x")
    server.check_still_ours()  # alive and listening: fine
    server.process.kill()
    server.process.wait()
    _StandIn.seen = []
    taker = http.server.ThreadingHTTPServer(("127.0.0.1", port), _StandIn)  # another local process takes the port
    threading.Thread(target=taker.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(EngineError, match=r"exited with code -9: nothing more is sent to http://127\.0\.0\.1"):
            engine.generate(["a prompt"], GenerationSettings())
        with pytest.raises(EngineError, match="exited with code"):
            engine.load(EngineWeights(base="x", kind="adapter", tag="round_1", folder=str(tmp_path)))
    finally:
        taker.shutdown()
        taker.server_close()
    assert _StandIn.seen == []  # neither the key nor a prompt went to it


def test_a_live_server_that_no_longer_holds_its_port_is_refused(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _stand_in_server(tmp_path, port)
    try:
        server.port = port + 1 if port < 65535 else port - 1  # as if it had lost its socket: another port is not its
        with pytest.raises(EngineError, match=r"no longer listens at .*nothing is sent there"):
            server.check_still_ours()
    finally:
        server.process.kill()
        server.process.wait()


def test_localhost_is_a_host_and_telemetry_opt_outs_reach_the_server(monkeypatch, tmp_path):
    from trl_soft.engines.ports import listen_address

    assert listen_address("localhost") == "127.0.0.1" and listen_address("::1") == "::1"
    assert listen_address("[::1]") == "::1" and listen_address("127.0.0.2") == "127.0.0.2"
    for name, value in {"DO_NOT_TRACK": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
                        "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "VLLM_CONFIG_ROOT": str(tmp_path / "vcfg")}.items():
        monkeypatch.setenv(name, value)
        assert server_environment(EngineSettings(), False, tmp_path, None, "adapter")[name] == value, name
