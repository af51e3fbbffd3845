"""What a `--config` YAML file alone may not ask for, checked before TRL's parser reads it (`check_config_env`):
shared by the `trl-soft` console script (`cli.py`) and the scripts it runs (`scripts/train.py`, `scripts/plan.py`,
`examples/`), below both.

A YAML config's `env:` block is applied by TRL's parser to this process (and so to every process it starts: a vLLM
server, torchrun workers). Entries that change which code a process loads or runs, or where its traffic and keys go
(`LD_PRELOAD`, `PYTHONPATH`, `VLLM_LOGGING_CONFIG_PATH`, `HTTPS_PROXY`, ...; `trl_soft.security.REFUSED_VARIABLES`)
are refused, unless the person running the command passes `--allow_loader_env`; so are `trust_remote_code` and the
insecure-key and remote-server opt-ins set by the file alone, a key variable that does not look like one for its
service, and a key sent to a host only the file names (`--allow_config_key_hosts`): a config file someone shared must
not choose what runs or where a key goes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import yaml

from .errors import ConfigEnvError
from .security import is_env_name, is_loopback, key_env_error, refused_variables, why_refused

ALLOW_LOADER_ENV = "--allow_loader_env"
ALLOW_CONFIG_KEY_HOSTS = "--allow_config_key_hosts"
OPT_INS = (ALLOW_LOADER_ENV, ALLOW_CONFIG_KEY_HOSTS)
# Settings a config file may not turn on by itself: they run a model's own code, send a key unencrypted, or open the
# server trl-soft starts to other machines. Given on the command line they are the user's choice.
COMMAND_LINE_ONLY = ("trust_remote_code", "judge_allow_insecure_key", "vllm_server_allow_insecure_key",
                     "vllm_server_allow_remote")


def _key_lines(node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """The line (1-based) of every mapping key of a YAML node, two levels deep, by its path."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                path = (*prefix, str(key.value))
                lines[path] = key.start_mark.line + 1
                if len(path) < 2:
                    lines.update(_key_lines(value, path))
    return lines


def _command_line(argv: Sequence[str]) -> dict[str, str]:
    """The `--name value` / `--name=value` / bare `--flag` options of `argv`, by name (the last one wins)."""
    given: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--config":
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            following = argv[i + 1] if i + 1 < len(argv) else None
            value = following if following is not None and not following.startswith("--") else "true"
        given[name] = value
    return given


def _truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"))


def _urls(value: object) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [part.strip() for item in items if isinstance(item, str) for part in item.split(",") if part.strip()]


def _config_problems(config: dict, lines: dict, argv: Sequence[str], allow_env: bool, allow_hosts: bool) -> list[str]:
    """What the file asks for that only the command line may (see `ConfigEnvError`), one line each."""
    cli = _command_line(argv)
    where = lambda *path: f"line {lines.get(path, '?')}"  # noqa: E731
    problems = []
    env = config.get("env")
    if isinstance(env, dict) and not allow_env:
        problems += [f"{where('env', str(name))}: `env: {name}` {why_refused(str(name))}; pass `{ALLOW_LOADER_ENV}` "
                     "on the command line if you trust this config" for name in refused_variables(map(str, env))]
    for name in COMMAND_LINE_ONLY:
        if _truthy(config.get(name)) and name not in cli:
            problems.append(f"{where(name)}: `{name}: true` may be set only on the command line (`--{name}`)")
    kwargs = config.get("model_init_kwargs")
    if isinstance(kwargs, dict) and _truthy(kwargs.get("trust_remote_code")) and not (
            "trust_remote_code" in cli or "model_init_kwargs" in cli):
        problems.append(f"{where('model_init_kwargs', 'trust_remote_code')}: `model_init_kwargs.trust_remote_code: "
                        "true` may be set only on the command line (`--trust_remote_code`)")
    for field in ("judge_api_key_env", "vllm_server_api_key_env"):
        if field in config and field not in cli:
            error = key_env_error(field, config[field])
            if error:
                problems.append(f"{where(field)}: {error}")
    effective = {**config, **cli}
    judges = {str(effective.get("behaviour_judge")), str(effective.get("pairwise_judge"))}
    plans = (
        ("judge_base_url", "judge_api_key_env", "openai" in judges),
        ("vllm_server_base_url", "vllm_server_api_key_env", str(effective.get("vllm_mode")) == "server"),
    )
    for url_field, key_field, used in plans:
        if not used or url_field not in config or url_field in cli or allow_hosts:
            continue
        key = effective.get(key_field)
        for url in _urls(config[url_field]):
            try:
                host = urlsplit(url).hostname
            except ValueError:
                continue  # the settings check names a malformed URL
            issuer = key_field == "judge_api_key_env" and key is None and host == "api.openai.com"
            if key in (None, "") or not host or is_loopback(host) or issuer:
                continue
            problems.append(f"{where(url_field)}: `{url_field}` would send the key in ${key} to {host}, a host only "
                            f"this file names; give the URL on the command line (`--{url_field}`), or pass "
                            f"`{ALLOW_CONFIG_KEY_HOSTS}` if you trust this config")
    return problems


def read_config_file(path: str) -> tuple[dict, str]:
    """The mapping a `--config` YAML file holds, and its text; `ConfigEnvError` naming the file (and the line) when it
    cannot be read, is not YAML, or holds no mapping, before TRL's parser reads it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as err:
        raise ConfigEnvError(f"`--config`: {path} is not UTF-8 text (byte {err.start}). Save it as UTF-8.") from None
    except OSError as err:
        raise ConfigEnvError(f"`--config`: cannot read {path} ({err.strerror or err}). Give a YAML file that "
                             "exists.") from None
    try:
        config = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigEnvError(f"`--config`: {where} is not valid YAML ({err.problem or err}).") from None
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise ConfigEnvError(f"`--config`: {path} is not valid YAML ({str(err).splitlines()[0][:200]}).") from None
    if not isinstance(config, dict):
        kind = "empty" if config is None else f"a YAML {type(config).__name__}"
        raise ConfigEnvError(f"`--config`: {path} is {kind}; it must hold a mapping of settings "
                             "(`num_rounds: 3`, one per line).")
    return config, text


_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _check_shape(path: str, config: dict, lines: dict) -> None:
    """Every top-level key names a setting, and `env:` maps variable names to plain values (what TRL's parser puts in
    the environment); otherwise `ConfigEnvError` naming the line."""
    line = lambda *keys: f"{path}:{lines.get(tuple(map(str, keys)), '?')}"  # noqa: E731
    for key in config:
        if not isinstance(key, str) or not _SETTING_NAME.fullmatch(key):
            raise ConfigEnvError(f"`--config`: {line(key)}: {key!r} is not the name of a setting (`num_rounds`, "
                                 "`learning_rate`, ...).")
    env = config.get("env")
    if env is None:
        return
    if not isinstance(env, dict):
        raise ConfigEnvError(f"`--config`: {line('env')}: `env:` must map variable names to values "
                             f"(`OMP_NUM_THREADS: 2`); it holds a YAML {type(env).__name__}.")
    for name, value in env.items():
        if not is_env_name(name):
            raise ConfigEnvError(f"`--config`: {line('env', name)}: {name!r} in `env:` is not the name of an "
                                 "environment variable (letters, digits, '_').")
        if isinstance(value, (dict, list)) or "\0" in str(value):
            raise ConfigEnvError(f"`--config`: {line('env', name)}: `env: {name}` must be a plain value (text or a "
                                 "number), not a list, a mapping or text holding a NUL character.")


def check_config_env(argv: Sequence[str]) -> list[str]:
    """`argv` without the opt-in flags (`--allow_loader_env`, `--allow_config_key_hosts`), once its `--config` file
    (if any) is checked: what only the command line may ask for is a `ConfigEnvError` naming each line (see its
    docstring). Reads the file only; nothing is applied."""
    argv = list(argv)
    allow_env, allow_hosts = ALLOW_LOADER_ENV in argv, ALLOW_CONFIG_KEY_HOSTS in argv
    argv = [a for a in argv if a not in OPT_INS]
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return argv

    path = argv[argv.index("--config") + 1]
    config, text = read_config_file(path)
    try:
        lines = _key_lines(yaml.compose(text))
    except (yaml.YAMLError, RecursionError, ValueError):
        lines = {}
    _check_shape(path, config, lines)
    problems = _config_problems(config, lines, argv, allow_env, allow_hosts)
    if problems:
        raise ConfigEnvError(
            f"{path} asks for what only the command line may (a config file someone shared must not choose what "
            "code runs or where a key goes):\n  " + "\n  ".join(problems)
        )
    return argv
