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
- **Environment variables that change what a child process loads** (`LOADER_VARIABLES`: the dynamic loader's
  `LD_*`, Python's `PYTHONPATH`, `PYTHONSTARTUP`, ...) are refused in a YAML config's `env:` block unless the person
  running the command opts in (`trl-soft train --allow_loader_env`): a shared YAML must not choose what code runs.

This module imports nothing of the package: anything may import it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
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


__all__ = [
    "LOADER_VARIABLES", "REDACTED", "host_of", "is_env_name", "is_loopback", "key_may_travel", "loader_variables",
    "redact_text", "redact_url", "url_credentials_error", "url_has_credentials",
]
