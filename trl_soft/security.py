"""Secrets: where a key may be sent, and what a written record of a URL may show.

- **Credentials never sit in a URL.** `user:password@host` in a URL would be copied into every record of that URL (the
  judge's verdict cache, logs, `to_dict()`, the pickled `training_args.bin`, the manifest, the model card), so a URL
  setting that holds them is refused (`url_credentials_error`), naming the field and never echoing the secret: a key
  is given by the name of the environment variable that holds it (`judge_api_key_env`, `vllm_server_api_key_env`).
- **Every URL written anywhere passes through `redact_url` / `redact_text`**: what is before `@` in the authority and
  the value of every query parameter become `***`. With credentials refused this changes nothing in a normal run; it
  is the second line for a URL set after the checks ran.
- **A key travels encrypted or stays on this machine** (`key_may_travel`): over https, or to a loopback address.
  Anything else needs the setting's explicit opt-in (`judge_allow_insecure_key`).
- **Environment variables that change what a process loads or runs, or where its traffic and keys go**
  (`REFUSED_VARIABLES`: the dynamic loader's `LD_*`, Python's `PYTHONPATH`, `PYTHONSTARTUP`, vLLM's
  `VLLM_LOGGING_CONFIG_PATH`, compile caches, proxies, CA bundles, hub and tracker endpoints, ...) are refused in a
  YAML config's `env:` block unless the person running the command opts in (`trl-soft train --allow_loader_env`): a
  shared YAML must not choose what code runs or where a key goes (`refused_variables`).
- **A key is read only from a variable that looks like one for its service** when a config file names it
  (`key_env_error`, `KEY_ENV_PATTERNS`): `AWS_SECRET_ACCESS_KEY` is not a judge's key.
- **Secrets inside dict-valued settings** (`model_init_kwargs={"token": ...}`) are blanked in every record
  (`redact_secrets`).
- **Paths a run deletes, moves or locks** are reached through no symbolic link below the run folder (`link_on_path`).

This module imports nothing of the package: anything may import it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# A URL (any scheme) inside free text; what follows `://` up to the first blank, quote or closing bracket.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`)\]]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Environment variables that change which code a process (or its children: a vLLM server, torchrun workers) loads.
LOADER_VARIABLES = frozenset({
    "PATH", "BASH_ENV", "ENV", "GCONV_PATH",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPLATLIBDIR", "PYTHONEXECUTABLE",
    "PYTHONBREAKPOINT", "PYTHONINSPECT",
})
LOADER_PREFIXES = ("LD_", "DYLD_")

# What a config file's `env:` block may not set (without `--allow_loader_env`), by name, with why: the table of
# docs/security.md ("What a config may make the run do") is this one, line by line (tests/test_security.py).
_LIBS = "changes which libraries the dynamic loader loads"
_PYTHON = "changes which code Python loads or runs"
_CACHE = "a cache of compiled code the process loads and runs"
_TRAFFIC = "sends the run's requests (and keys) through another host"
_TRUST = "changes which TLS certificates are trusted"
_KEYS = "sends a key to the host it names"
REFUSED_VARIABLES: dict[str, str] = {
    "PATH": "changes which programs a process starts",
    "BASH_ENV": "a file the shell runs when it starts", "ENV": "a file the shell runs when it starts",
    "LD_*": _LIBS, "DYLD_*": _LIBS, "GCONV_PATH": _LIBS,
    **{name: _PYTHON for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPLATLIBDIR",
                                  "PYTHONEXECUTABLE", "PYTHONBREAKPOINT", "PYTHONINSPECT")},
    "PYTHONPYCACHEPREFIX": "Python reads compiled modules (.pyc) from this folder",
    "PYTHONWARNINGS": "a warning filter imports the module its category names",
    "VLLM_LOGGING_CONFIG_PATH": "vLLM hands this file to `logging.config.dictConfig`, which can call any function",
    "VLLM_PLUGINS": "chooses which installed plugins vLLM loads and runs",
    "HF_MODULES_CACHE": "transformers imports a model's own code from this folder",
    "VLLM_CACHE_ROOT": _CACHE, "TORCHINDUCTOR_CACHE_DIR": _CACHE, "TRITON_CACHE_DIR": _CACHE,
    "TORCH_EXTENSIONS_DIR": _CACHE,
    "HTTP_PROXY": _TRAFFIC, "HTTPS_PROXY": _TRAFFIC, "ALL_PROXY": _TRAFFIC, "NO_PROXY": _TRAFFIC,
    "REQUESTS_CA_BUNDLE": _TRUST, "CURL_CA_BUNDLE": _TRUST, "SSL_CERT_FILE": _TRUST, "SSL_CERT_DIR": _TRUST,
    "NETRC": "credentials sent with HTTP requests",
    "HF_ENDPOINT": _KEYS, "WANDB_BASE_URL": _KEYS, "MLFLOW_TRACKING_URI": _KEYS,
}
assert LOADER_VARIABLES <= set(REFUSED_VARIABLES)

# The names a key's variable may have when a config file names it (the command line may name any variable).
KEY_ENV_PATTERNS = {
    "judge_api_key_env": re.compile(r"OPENAI_API_KEY|[A-Z0-9_]*JUDGE[A-Z0-9_]*_KEY"),
    "vllm_server_api_key_env": re.compile(r"[A-Z0-9_]*VLLM[A-Z0-9_]*_KEY"),
}
KEY_ENV_SHAPES = {"judge_api_key_env": "OPENAI_API_KEY, or a name holding JUDGE and ending in _KEY",
                  "vllm_server_api_key_env": "a name holding VLLM and ending in _KEY"}

# Keys of dict-valued settings whose values are secrets (`redact_secrets`); a tokenizer's special tokens are not.
_SECRET_KEY = re.compile(r"(^|_)(token|key|secret|password|passwd|credentials?)$", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"(pad|bos|eos|unk|sep|cls|mask|additional_special)_token$", re.IGNORECASE)


# ---- URLs ------------------------------------------------------------------------------------------------------------
def _split(url: str):
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        return None
    return parts


def url_has_credentials(url: str) -> bool:
    """Whether `url` holds `user[:password]@` before its host."""
    parts = _split(url) if isinstance(url, str) else None
    if parts is not None:
        return "@" in parts.netloc
    return isinstance(url, str) and "@" in url.split("://", 1)[-1].split("/", 1)[0]


def redact_url(url: str) -> str:
    """`url` as it may be written or logged: credentials before the host and every query value become `***`
    (`https://user:pw@host/v1?key=k` -> `https://***@host/v1?key=***`). Anything that is not a URL is returned as it is;
    a URL that cannot be parsed loses everything after its scheme."""
    if not isinstance(url, str):
        return url
    if "://" not in url:  # `user:pw@host/v1` without a scheme: still no credentials shown
        head, slash, rest = url.partition("/")
        return f"{REDACTED}@{head.rsplit('@', 1)[1]}{slash}{rest}" if "@" in head else url
    parts = _split(url)
    if parts is None:
        return url.split("://", 1)[0] + "://" + REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, REDACTED) for key, _ in pairs], safe="*") if pairs else REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment and REDACTED))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (`redact_url`): for messages and records that quote a URL."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def url_credentials_error(field: str, value: object, fix: str = "") -> ValueError | None:
    """The error for a setting `field` whose URL (or one of its URLs) holds credentials, or None. The message shows
    the URL redacted, never the secret."""
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    for url in values:
        if isinstance(url, str) and url_has_credentials(url):
            return ValueError(
                f"`{field}` holds credentials in its URL ({redact_url(url)}): they would be written into every record "
                "of the URL (logs, caches, checkpoints). Give the URL without `user:password@`"
                + (f"; {fix}" if fix else "") + "."
            )
    return None


def host_of(url: str) -> str:
    """The host (and port, when given) a URL points at, for messages: never its credentials."""
    parts = _split(url)
    if parts is None or not parts.hostname:
        return "?"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}" if parts.port else host


def is_loopback(host: str | None) -> bool:
    """Whether `host` names this machine's loopback interface (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_may_travel(url: str) -> bool:
    """Whether a key sent to `url` is safe from the network between: https, or a loopback host."""
    parts = _split(url)
    return parts is not None and (parts.scheme == "https" or is_loopback(parts.hostname))


# ---- environment variables -------------------------------------------------------------------------------------------
def is_env_name(name: object) -> bool:
    return isinstance(name, str) and bool(ENV_NAME.match(name))


def loader_variables(names: Iterable[str]) -> list[str]:
    """The names among `names` that change which code a process loads (`LOADER_VARIABLES`, `LD_*`, `DYLD_*`)."""
    return [n for n in names if str(n).upper() in LOADER_VARIABLES or str(n).upper().startswith(LOADER_PREFIXES)]


def refused_variables(names: Iterable[str]) -> list[str]:
    """The names among `names` a config file's `env:` block may not set (`REFUSED_VARIABLES`; any case)."""
    refused = []
    for name in names:
        upper = str(name).upper()
        if upper in REFUSED_VARIABLES or upper.startswith(LOADER_PREFIXES):
            refused.append(str(name))
    return refused


def why_refused(name: str) -> str:
    upper = name.upper()
    return REFUSED_VARIABLES.get(upper) or REFUSED_VARIABLES[upper[:upper.index("_") + 1] + "*"]


def key_env_error(field: str, name: object) -> str | None:
    """Why a config file may not name `name` as the variable of `field`'s key, or None when it looks like a key of
    that service (`KEY_ENV_PATTERNS`)."""
    if not isinstance(name, str) or not name or field not in KEY_ENV_PATTERNS:
        return None
    if KEY_ENV_PATTERNS[field].fullmatch(name):
        return None
    return (f"`{field}`: {name!r} does not look like a key for this service ({KEY_ENV_SHAPES[field]}), so a config "
            f"file may not send it; name it on the command line (`--{field} {name}`) if it is meant")


def is_secret_key(name: object) -> bool:
    return isinstance(name, str) and bool(_SECRET_KEY.search(name)) and not _SPECIAL_TOKEN.search(name)


def redact_secrets(value):
    """`value` (a dict-valued setting such as `model_init_kwargs`) with every secret-named entry blanked (None) at any
    depth, and URLs redacted; a copy where anything changes, `value` itself otherwise."""
    if isinstance(value, dict):
        out = {k: (None if is_secret_key(k) and isinstance(v, str) else redact_secrets(v)) for k, v in value.items()}
        return out if any(out[k] is not value[k] for k in value) else value
    if isinstance(value, (list, tuple)):
        out = [redact_secrets(v) for v in value]
        return type(value)(out) if any(a is not b for a, b in zip(out, value)) else value
    if isinstance(value, str) and "://" in value:
        shown = redact_url(value)
        return shown if shown != value else value
    return value


# ---- paths -----------------------------------------------------------------------------------------------------------
def link_on_path(root: str | Path, path: str | Path) -> Path | None:
    """The first symbolic link on the way from `root` (itself not looked at: a run folder may be reached through a
    link the user made) down to `path`, `path` included; `path` itself when it is not below `root`; None when the way
    holds no link (the parts that exist are checked with `lstat`, never followed)."""
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    try:
        relative = path.relative_to(root)
    except ValueError:
        return path
    current = root
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return None
        except OSError:
            return current
        if stat.S_ISLNK(mode):
            return current
    return None


__all__ = [
    "KEY_ENV_PATTERNS", "LOADER_VARIABLES", "REFUSED_VARIABLES", "is_secret_key", "key_env_error", "link_on_path",
    "redact_secrets", "refused_variables", "REDACTED", "host_of", "is_env_name", "is_loopback", "key_may_travel", "loader_variables",
    "redact_text", "redact_url", "url_credentials_error", "url_has_credentials",
]
