"""Secrets and what a config may make the run do (`trl_soft.security`, docs/security.md): a judge key goes only over
https or to this machine, and `$OPENAI_API_KEY` only to OpenAI unless named; credentials in a URL are refused without
being echoed; `to_dict()`, `str()`, the pickled config and every file of a real run carry no token and no credential;
a YAML `env:` block cannot set loader variables without `--allow_loader_env`; a user's template is rendered under
size, time and memory bounds. No request leaves this machine: the key checks happen before any request is made."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import torch

from trl_soft import SOFTConfig
from trl_soft.cli import main
from trl_soft.config_file import check_config_env
from trl_soft.errors import ConfigEnvError, TemplateRenderError
from trl_soft.judges.openai import OpenAIJudge
from trl_soft.judges.settings import JudgeSettings, judge_key
from trl_soft.sandbox import render_bounded
from trl_soft.security import (
    is_loopback,
    key_may_travel,
    loader_variables,
    redact_text,
    redact_url,
    url_credentials_error,
)

from .conftest import make_tiny_llama, prompt_dataset, tiny_config

SECRET = "s3cretPW9"
TOKEN = "hf_secretTOKEN4242"


# ---- URLs ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        (f"https://user:{SECRET}@judge.example/v1", "https://***@judge.example/v1"),
        (f"http://{SECRET}@10.0.0.2:8000", "http://***@10.0.0.2:8000"),
        (f"https://h/v1?api_key={SECRET}&v=2", "https://h/v1?api_key=***&v=***"),
        (f"user:{SECRET}@host/v1", "***@host/v1"),
        ("unix:/tmp/vllm.sock", "unix:/tmp/vllm.sock"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_credentials_and_query_values(url, shown):
    assert redact_url(url) == shown
    if "://" in url:  # in free text a URL is found by its scheme
        assert SECRET not in redact_text(f"the server at {url} (`vllm_server_base_url`) does not answer")


def test_a_url_with_credentials_is_refused_without_echoing_them():
    error = url_credentials_error("judge_base_url", ["http://a:8000", f"https://me:{SECRET}@b/v1"], "use the key env")
    assert error is not None and "`judge_base_url`" in str(error) and SECRET not in str(error)
    assert url_credentials_error("judge_base_url", "https://b/v1") is None
    for kw in (
        {"judge_base_url": f"https://me:{SECRET}@judge.example/v1", "behaviour_judge": "openai"},
        {"vllm_server_base_url": f"http://me:{SECRET}@10.0.0.2:8000", "vllm_mode": "server"},
        {"hub_model_id": f"https://me:{SECRET}@example.org/org/name"},  # any field: the check is the config's
    ):
        field = next(iter(kw))
        with pytest.raises(ValueError, match=rf"`{field}` holds credentials") as info:
            SOFTConfig(output_dir="unused", report_to="none", **kw)
        assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match="`judge_base_url` holds credentials") as info:
        OpenAIJudge(f"https://me:{SECRET}@judge.example/v1")
    assert SECRET not in str(info.value)


# ---- where a judge key goes ------------------------------------------------------------------------------------------
def test_loopback_and_tls():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1") and is_loopback("[::1]")
    assert is_loopback("localhost") and not is_loopback("10.0.0.2") and not is_loopback("example.org")
    assert key_may_travel("https://example.org/v1") and key_may_travel("http://127.0.0.1:8000/v1")
    assert key_may_travel("http://[::1]:8000") and not key_may_travel("http://10.0.0.2:8000/v1")


def test_a_judge_key_is_not_sent_over_plain_http_to_another_host_without_the_opt_in(monkeypatch):
    """Checked from the settings, before any request: a plain-http URL of another host with a named key is refused
    (whether or not the variable is set); the opt-in accepts it; https and loopback need none."""
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    remote = "http://10.0.0.2:8000/v1"
    with pytest.raises(ValueError, match=r"`judge_base_url` is plain http to 10\.0\.0\.2:8000.*\$MY_JUDGE_KEY") as info:
        SOFTConfig(output_dir="unused", report_to="none", behaviour_judge="openai", judge_base_url=remote,
                   judge_api_key_env="MY_JUDGE_KEY")
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match="plain http"):
        OpenAIJudge(remote, api_key_env="MY_JUDGE_KEY")  # the judge itself refuses too
    insecure = OpenAIJudge(remote, api_key_env="MY_JUDGE_KEY", allow_insecure_key=True)
    assert insecure.headers == {"Authorization": f"Bearer {SECRET}"}
    config = SOFTConfig(output_dir="unused", report_to="none", behaviour_judge="openai", judge_base_url=remote,
                        judge_api_key_env="MY_JUDGE_KEY", judge_allow_insecure_key=True)
    assert "plain http, `judge_allow_insecure_key`" in config.settings.judges.key_plan()
    for url in ("https://judge.example/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000"):
        assert OpenAIJudge(url, api_key_env="MY_JUDGE_KEY").headers == {"Authorization": f"Bearer {SECRET}"}
    assert OpenAIJudge(remote, api_key_env="").headers == {}  # '' sends no key, so plain http is fine


def test_openai_api_key_goes_only_to_openai_unless_named(monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for url in ("http://10.0.0.2:8000/v1", "https://other-provider.example/v1", "http://127.0.0.1:8000/v1"):
        assert OpenAIJudge(url).headers == {}, url
        assert judge_key(url, None)[0] is None
    assert OpenAIJudge("https://api.openai.com/v1").headers == {"Authorization": f"Bearer {SECRET}"}
    named = OpenAIJudge("https://other-provider.example/v1", api_key_env="OPENAI_API_KEY")
    assert named.headers == {"Authorization": f"Bearer {SECRET}"}
    # what the run prints at the start: the variable and the host, never the value
    settings = JudgeSettings(pointwise="openai", base_url="https://other-provider.example/v1", api_key_env="OPENAI_API_KEY")
    plan = settings.key_plan()
    assert plan == "judge key -> other-provider.example: $OPENAI_API_KEY (https)" and SECRET not in plan
    unset = JudgeSettings(pointwise="openai", base_url="http://10.0.0.2:8000/v1").key_plan()
    assert "none" in unset and "api.openai.com" in unset
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "is not set, so no key is sent" in JudgeSettings(pointwise="openai", base_url="https://api.openai.com/v1").key_plan()


# ---- the config as it is recorded ------------------------------------------------------------------------------------
def test_the_config_records_no_token_and_no_credential(tmp_path):
    config = tiny_config(tmp_path / "out", hub_token=TOKEN)
    assert TOKEN not in str(config) and TOKEN not in repr(config) and TOKEN not in str(config.to_dict())
    stored = io.BytesIO()
    torch.save(config, stored)  # what the HF Trainer writes as training_args.bin
    assert TOKEN.encode() not in stored.getvalue() and TOKEN.encode() not in pickle.dumps(config)
    stored.seek(0)
    loaded = torch.load(stored, weights_only=False)
    assert loaded.hub_token is None and config.hub_token == TOKEN  # pickling leaves the live config alone
    assert loaded.settings.fingerprint() == config.settings.fingerprint()  # the run it describes is the same run
    assert loaded.output_dir == config.output_dir and loaded.num_rounds == config.num_rounds
    assert copy.deepcopy(config).hub_token == TOKEN and copy.copy(config).hub_token == TOKEN  # in-process copies
    # a URL set after the checks ran is still never recorded with its credentials
    config.judge_base_url = f"https://me:{SECRET}@judge.example/v1"
    assert config.to_dict()["judge_base_url"] == "https://***@judge.example/v1"
    assert SECRET not in str(config) and SECRET.encode() not in pickle.dumps(config)


def test_no_file_of_a_real_run_holds_the_hub_token(tmp_path, tokenizer):
    """One short round on the tiny Llama with `hub_token` set: no file under `output_dir` (models, their pickled
    `training_args.bin`, manifest, summary, generations) holds it, and the unpickled args carry none."""
    from trl_soft import SOFTTrainer

    out = tmp_path / "out"
    config = tiny_config(out, num_rounds=1, hub_token=TOKEN, evaluate_start=False, validation_path="none",
                         diagnostics_num_prompts=0)
    trainer = SOFTTrainer(model=make_tiny_llama(tokenizer), args=config, train_dataset=prompt_dataset(4),
                          processing_class=tokenizer)
    trainer.train()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)
    assert [str(p) for p in files if TOKEN.encode() in p.read_bytes()] == []
    args = torch.load(out / "final_model" / "training_args.bin", weights_only=False)
    assert args.hub_token is None and TOKEN not in str(vars(args))


# ---- a YAML config's env: block --------------------------------------------------------------------------------------
def test_a_config_env_block_may_not_set_loader_variables(tmp_path, monkeypatch, capsys):
    assert loader_variables(["LD_PRELOAD", "PYTHONPATH", "HF_HOME", "ld_library_path", "DYLD_INSERT_LIBRARIES"]) == [
        "LD_PRELOAD", "PYTHONPATH", "ld_library_path", "DYLD_INSERT_LIBRARIES"]
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    path = tmp_path / "shared.yaml"
    path.write_text("num_rounds: 1\nenv:\n  LD_PRELOAD: /tmp/evil.so\n  HF_HOME: /tmp/hf\n")
    with pytest.raises(ConfigEnvError, match="LD_PRELOAD.*--allow_loader_env"):
        check_config_env(["--config", str(path)])
    assert main(["train", "--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    assert "LD_PRELOAD" in capsys.readouterr().err
    import os

    assert "LD_PRELOAD" not in os.environ and not (tmp_path / "out").exists()  # refused before TRL applied it
    # the person running the command may opt in; the flag is consumed here, not passed to the parser
    assert check_config_env(["--config", str(path), "--allow_loader_env", "--seed", "1"]) == [
        "--config", str(path), "--seed", "1"]
    (tmp_path / "plain.yaml").write_text("num_rounds: 1\nenv:\n  HF_HOME: /tmp/hf\n")
    assert check_config_env(["--config", str(tmp_path / "plain.yaml")]) == ["--config", str(tmp_path / "plain.yaml")]
    # the scripts' own entry point (the one examples/ and `python -m trl_soft.scripts.train` use) refuses it too
    from trl_soft.scripts.train import run

    with pytest.raises(ConfigEnvError, match="LD_PRELOAD"):
        run(["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert "LD_PRELOAD" not in os.environ and not (tmp_path / "out").exists()


# ---- a user's template -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("{{ 'x' * 10**7 }}", "size"),
        ("{{ 'x'.ljust(10**6) }}", "size"),
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "time"),
        ("{{ ''.__class__.__mro__ }}", "security"),
    ],
)
def test_a_template_render_is_bounded(source, kind):
    with pytest.raises(TemplateRenderError) as info:
        render_bounded(source, [{"question": "Why?"}], time_limit=3)
    assert info.value.kind == kind


def test_a_template_that_would_take_the_memory_is_stopped():
    with pytest.raises(TemplateRenderError) as info:
        render_bounded("{% set s = 'x' * 10**8 %}{{ [s, s, s, s, s, s] | join | length }}", [{"question": "q"}],
                       time_limit=10, memory_limit=256 << 20)
    assert info.value.kind in ("memory", "time")
    assert render_bounded("Q: {{ question }}", [{"question": "a"}, {"question": "b"}]) == ["Q: a", "Q: b"]


def test_truthfulqa_names_its_field_for_a_template_past_the_bounds(tmp_path):
    from trl_soft.evaluation import truthfulqa

    path = tmp_path / "t.jinja"
    path.write_text("{{ question * 10**6 }}")
    with pytest.raises(ValueError, match=r"`truthfulqa_template`: \S*t\.jinja cannot be rendered within the limits"):
        truthfulqa.check_template(str(path))
    assert Path(path).is_file()


def test_a_token_inside_a_dict_setting_is_never_recorded(tmp_path):
    """`model_init_kwargs={"token": ...}` (and any secret-named key at any depth of a dict-valued field) is blanked in
    what `report_to` uploads, in `str()` and in the pickled `training_args.bin`; special tokens are not secrets."""
    from trl_soft.security import redact_secrets

    kwargs = {"token": TOKEN, "revision": "main", "nested": {"hf_token": TOKEN, "api_key": TOKEN, "deeper": [
        {"password": TOKEN}]}, "pad_token": "<pad>", "trust_remote_code": False}
    config = tiny_config(tmp_path / "out", model_init_kwargs=kwargs)
    for record in (str(config), repr(config), str(config.to_dict())):
        assert TOKEN not in record
    stored = io.BytesIO()
    torch.save(config, stored)
    assert TOKEN.encode() not in stored.getvalue() and TOKEN.encode() not in pickle.dumps(config)
    assert config.model_init_kwargs["token"] == TOKEN  # the live config still loads with it
    assert TOKEN not in str(config.settings.fingerprint())  # nor the manifest (the fingerprint is stored there)
    shown = redact_secrets(kwargs)
    assert shown["token"] is None and shown["nested"]["deeper"][0]["password"] is None
    assert shown["pad_token"] == "<pad>" and shown["revision"] == "main"


# ---- what an HTTP session of the judge reads from the environment (issue 27) -----------------------------------------
class _Recorder:
    """A loopback HTTP server answering an OpenAI model list, noting each request's target and Authorization."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                seen.append((self.path, self.headers.get("Authorization")))
                body = b'{"object": "list", "data": [{"id": "judge-model"}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_and_proxy(tmp_path, monkeypatch):
    judge, proxy = _Recorder(), _Recorder()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login netrc-user password {SECRET}\n"
                     f"machine judge.example login netrc-user password {SECRET}\n")
    netrc.chmod(0o600)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    yield judge, proxy
    judge.close()
    proxy.close()


def test_a_loopback_judge_ignores_proxies_and_netrc(judge_and_proxy, monkeypatch):
    judge, proxy = judge_and_proxy
    monkeypatch.setenv("MY_JUDGE_KEY", TOKEN)
    OpenAIJudge(judge.url + "/v1", api_key_env="MY_JUDGE_KEY").check_reachable()
    OpenAIJudge(judge.url + "/v1", api_key_env="").check_reachable()
    assert judge.seen == [("/v1/models", f"Bearer {TOKEN}"), ("/v1/models", None)]  # no netrc login, key kept
    assert proxy.seen == []  # the key never went through the proxy


def test_a_remote_judge_may_use_the_proxy_but_never_gets_netrc_credentials(judge_and_proxy):
    """Traffic stays on this machine: the 'remote' judge is reached through the loopback proxy, which answers."""
    judge, proxy = judge_and_proxy
    OpenAIJudge("http://judge.example:8000/v1", api_key_env="").check_reachable()
    assert proxy.seen == [("http://judge.example:8000/v1/models", None)]


# ---- what a config file alone may not ask for (issue 27) -------------------------------------------------------------
def _yaml(tmp_path, text, name="shared.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_docs_table_of_refused_variables_is_the_code_s_line_by_line(tmp_path):
    """docs/security.md lists `REFUSED_VARIABLES` one row each, with its reason; every row is refused in `env:`."""
    import re

    from trl_soft.security import REFUSED_VARIABLES

    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z_*]+)` \| (.+?) \|$", text, flags=re.MULTILINE))
    assert rows == REFUSED_VARIABLES
    for name in REFUSED_VARIABLES:
        concrete = name.replace("*", "INSERT_LIBRARIES")
        path = _yaml(tmp_path, f"num_rounds: 1\nenv:\n  HF_HOME: /tmp/hf\n  {concrete}: /tmp/x\n")
        with pytest.raises(ConfigEnvError, match=rf"line 4: `env: {concrete}`"):
            check_config_env(["--config", path])
        assert check_config_env(["--config", path, "--allow_loader_env"]) == ["--config", path]


@pytest.mark.parametrize(
    ("text", "line", "refused", "fix"),
    [
        ("env:\n  VLLM_LOGGING_CONFIG_PATH: /tmp/log.json\n", 2, "dictConfig", ["--allow_loader_env"]),
        ("env:\n  HTTPS_PROXY: http://10.0.0.9:3128\n", 2, "HTTPS_PROXY", ["--allow_loader_env"]),
        ("num_rounds: 1\ntrust_remote_code: true\n", 2, "`trust_remote_code: true` may be set only on the command",
         ["--trust_remote_code"]),
        ("model_init_kwargs:\n  revision: main\n  trust_remote_code: true\n", 3, "model_init_kwargs.trust_remote_code",
         ["--trust_remote_code"]),
        ("judge_allow_insecure_key: true\n", 1, "judge_allow_insecure_key", ["--judge_allow_insecure_key"]),
        ("behaviour_judge: openai\njudge_base_url: https://judge.example/v1\njudge_api_key_env: AWS_SECRET_ACCESS_KEY\n",
         3, "'AWS_SECRET_ACCESS_KEY' does not look like a key", ["--judge_api_key_env", "AWS_SECRET_ACCESS_KEY",
                                                                 "--judge_base_url", "https://judge.example/v1"]),
        ("behaviour_judge: openai\njudge_base_url: https://judge.example/v1\njudge_api_key_env: MY_JUDGE_KEY\n", 2,
         r"send the key in \$MY_JUDGE_KEY to judge\.example, a host only this file names", ["--allow_config_key_hosts"]),
        ("vllm_mode: server\nvllm_server_base_url: http://other-host:8000\nvllm_server_api_key_env: HF_TOKEN\n", 3,
         "'HF_TOKEN' does not look like a key", ["--vllm_server_api_key_env", "HF_TOKEN", "--vllm_server_base_url",
                                                 "http://other-host:8000"]),
        ("vllm_mode: server\nvllm_server_base_url: [unix:/tmp/a.sock, 'https://gpu-box:8000']\n"
         "vllm_server_api_key_env: MY_VLLM_KEY\n", 2, "to gpu-box, a host only this file names",
         ["--vllm_server_base_url", "unix:/tmp/a.sock,https://gpu-box:8000"]),
    ],
)
def test_a_config_file_alone_may_not_run_code_or_choose_where_a_key_goes(tmp_path, text, line, refused, fix):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigEnvError, match=rf"(?s)line {line}: .*{refused}"):
        check_config_env(["--config", path])
    check_config_env(["--config", path, *fix])  # the command line may


def test_keys_to_loopback_or_to_their_issuer_need_no_flag_and_the_command_refuses_before_writing(tmp_path, capsys):
    for text in ("behaviour_judge: openai\njudge_base_url: http://127.0.0.1:8000/v1\njudge_api_key_env: MY_JUDGE_KEY\n",
                 "behaviour_judge: openai\njudge_base_url: https://api.openai.com/v1\n",
                 "behaviour_judge: rules\njudge_base_url: https://judge.example/v1\njudge_api_key_env: MY_JUDGE_KEY\n",
                 "behaviour_judge: openai\njudge_base_url: https://judge.example/v1\njudge_api_key_env: ''\n"):
        check_config_env(["--config", _yaml(tmp_path, text)])
    path = _yaml(tmp_path, "vllm_mode: server\nvllm_server_base_url: http://other-host:8000\n"
                           "vllm_server_api_key_env: HF_TOKEN\n")
    out = tmp_path / "out"
    assert main(["train", "--config", path, "--output_dir", str(out)]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [  # found by benchmarks/fuzz_inputs.py: each went on to a traceback in TRL's parser or in `os.environ`
        ("", r"config\.yaml is empty; it must hold a mapping"),
        ("- num_rounds\n- 3\n", r"config\.yaml is a YAML list; it must hold a mapping"),
        ("be", r"config\.yaml is a YAML str"),
        ("num_rounds: 3\n\x1b: 1\n", r"config\.yaml is not valid YAML \(unacceptable character #x001b"),
        ("num_rounds: [1\n", r"config\.yaml:2 is not valid YAML"),
        ("num_rounds: 2\nenv:\n  '': 1\n", r"config\.yaml:3: '' in `env:` is not the name of an environment variable"),
        ("env:\n  A B: x\n", r"config\.yaml:2: 'A B' in `env:` is not the name"),
        ("env:\n  OMP_NUM_THREADS: [1, 2]\n", r"config\.yaml:2: `env: OMP_NUM_THREADS` must be a plain value"),
        ("env: [OMP_NUM_THREADS]\n", r"config\.yaml:1: `env:` must map variable names to values"),
        ("num_rounds: 2\n0: null\n", r"config\.yaml:2: 0 is not the name of a setting"),
    ],
)
def test_a_config_file_that_is_not_a_mapping_of_settings_is_named_with_its_line(tmp_path, text, message, capsys):
    path = _yaml(tmp_path, text, "config.yaml")
    with pytest.raises(ConfigEnvError, match=rf"`--config`: \S*{message}"):
        check_config_env(["--config", path])
    assert main(["train", "--config", path, "--output_dir", str(tmp_path / "out")]) == 2
    assert "`--config`" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_config_file_that_is_not_utf8_or_missing_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("num_rounds: 2\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigEnvError, match=r"`--config`: \S*latin1\.yaml is not UTF-8 text"):
        check_config_env(["--config", str(path)])
    with pytest.raises(ConfigEnvError, match=r"`--config`: cannot read \S*gone\.yaml"):
        check_config_env(["--config", str(tmp_path / "gone.yaml")])


def test_a_chat_template_gets_the_bounds_of_a_user_template(tmp_path, tokenizer, monkeypatch):
    """The run's longest prompts go through the tokenizer's chat template in the sandbox's child first: a template
    past the bounds is refused before anything renders it in-process; the real one renders there exactly as
    transformers renders it."""
    import copy

    from trl_soft import sandbox
    from trl_soft.inputs import RunInputs

    monkeypatch.setattr(sandbox, "TIME_LIMIT", 3.0)  # the nested loops need far longer; no need to wait 30 s
    config = tiny_config(tmp_path / "out", prompt_format="chat")
    inputs = RunInputs.load(config.settings, 0, prompt_dataset(4))
    formatter, _ = inputs.prompt_format(tokenizer, config.settings)
    messages = formatter.chat_messages("Why is the sky blue?", inputs.exemplars[:2])
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_bounded(tokenizer.chat_template, [{"messages": messages, "add_generation_prompt": True}],
                          chat=True) == [expected]
    for source in ("{{ 'x' * 10**7 }}", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
                                        "{% endfor %}", "{{ ''.__class__.__mro__ }}"):
        bomb = copy.deepcopy(tokenizer)
        bomb.chat_template = source
        with pytest.raises(ValueError, match=r"`model_name_or_path` \(or `chat_template_path`\): its chat template "
                                             "cannot be rendered within the limits"):
            inputs.prompt_format(bomb, config.settings)
