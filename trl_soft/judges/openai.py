"""`OpenAIJudge`: pointwise and pairwise verdicts from any OpenAI-compatible chat-completions endpoint (a vLLM
server, a hosted API), over plain HTTP with `requests`.

It sends the judge prompts of `prompts.py` (the same `HFJudge` scores) and asks for one token, greedily, with the
top-10 log-probabilities: P(yes) is renormalised over the candidates that are yes or no words (P(A) over A and B;
a side missing from the top-10 counts as likely as the last candidate, see `probability_from_logprobs`); when the
endpoint returns no log-probabilities, or none of its candidates is such a word, the reply's text decides
(probability 1 or 0; none when the text is neither). Several requests are in flight at once; connection errors,
timeouts, HTTP 429 and 5xx are retried with exponential backoff (honouring `Retry-After`), other errors are not.

`base_url` is the API root, as OpenAI's clients take it ("https://api.openai.com/v1"); a bare server address
("http://127.0.0.1:8000") gets "/v1". The API key is read from the environment variable `judge_key` (below)
picks: the one `api_key_env` names, sent only over https or to a loopback address (`allow_insecure_key` for anything
else); unset, `$OPENAI_API_KEY` for api.openai.com only. With no key no Authorization header is sent (a local vLLM
server needs none). The judge's `name` (the verdict cache's key), its messages and its errors show the URL redacted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from ..errors import JudgeError
from ..security import host_of, is_loopback, key_may_travel, redact_url, url_credentials_error
from ..threads import map_in_flight
from .base import CRITERIA, Verdict, check_criterion, check_lengths
from .prompts import (
    FIRST_WORDS,
    NO_WORDS,
    PROMPT_VERSION,
    SECOND_WORDS,
    YES_WORDS,
    Messages,
    pairwise_messages,
    pointwise_messages,
    probability_from_logprobs,
    probability_from_text,
)

MAX_IN_FLIGHT = 8
TOP_LOGPROBS = 10
MAX_BACKOFF = 30.0  # seconds
PROGRESS_MIN_ITEMS = 64
_START_HINT = "Start the server or correct `judge_base_url`."
_REACH = "Checking the judge endpoint"
T = TypeVar("T")


# With `judge_api_key_env` unset: this variable's key, for these hosts only (the service that issues it).
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_KEY_HOSTS = ("api.openai.com",)


def judge_key(base_url: str, api_key_env: str | None, allow_insecure: bool = False) -> tuple[str | None, str]:
    """(the environment variable whose value is sent to `base_url` as the judge's key, or None; why, for the log).

    Raises `ValueError` naming the field when the key would cross the network unencrypted (plain http to a host that
    is not this machine) without `judge_allow_insecure_key`. Decided from the settings alone, whether or not the
    variable is set, so a config is refused or accepted the same on every machine."""
    host = (urlsplit(base_url).hostname or "").lower()
    if api_key_env is None:
        if host not in DEFAULT_KEY_HOSTS:
            return None, (f"none (`judge_api_key_env` is unset: ${DEFAULT_KEY_ENV} goes only to "
                          f"{', '.join(DEFAULT_KEY_HOSTS)})")
        api_key_env = DEFAULT_KEY_ENV
    if not api_key_env:
        return None, "none (`judge_api_key_env` is '')"
    if not key_may_travel(base_url) and not allow_insecure:
        raise ValueError(
            f"`judge_base_url` is plain http to {host_of(base_url)}, which is not this machine: the key in "
            f"${api_key_env} (`judge_api_key_env`) would cross the network unencrypted. Use an https:// URL or a "
            "loopback address (127.0.0.1), set `judge_api_key_env=''` to send no key, or set "
            "`judge_allow_insecure_key=True` (a network you trust)."
        )
    how = "https" if urlsplit(base_url).scheme == "https" else "plain http, loopback" if key_may_travel(base_url) \
        else "plain http, `judge_allow_insecure_key`"
    return api_key_env, f"${api_key_env} ({how})"


def api_root(base_url: str) -> str:
    """`base_url` without a trailing slash, with "/v1" added when it is a bare server address."""
    root = base_url.rstrip("/")
    return root if urlsplit(root).path else root + "/v1"


class _NoNetrc(requests.auth.AuthBase):
    """An auth that adds nothing: with it set on the session, `requests` never looks in `~/.netrc` (whose login would
    go to the host, or replace the bearer key)."""

    def __call__(self, request):
        return request


def judge_session(base_url: str) -> requests.Session:
    """The HTTP session of a judge at `base_url`: never sends `~/.netrc` credentials; to a loopback host it also ignores
    the environment's proxies and CA settings (a call to this machine never leaves it)."""
    session = requests.Session()
    session.auth = _NoNetrc()
    if is_loopback(urlsplit(base_url).hostname):
        session.trust_env = False  # no HTTP(S)_PROXY, no netrc, no REQUESTS_CA_BUNDLE: loopback stays loopback
        session.proxies = {}
    return session


class OpenAIJudge:
    """Verdicts from an OpenAI-compatible endpoint; see the module docstring.

    `model` is the served model's name; unset, the first model the endpoint lists (`GET /models`) is used."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_in_flight: int = MAX_IN_FLIGHT,
        backoff: float = 1.0,
        allow_insecure_key: bool = False,
    ):
        credentials = url_credentials_error("judge_base_url", base_url, "give the key through `judge_api_key_env`")
        if credentials is not None:
            raise credentials
        if not base_url.startswith(("http://", "https://")) or urlsplit(base_url).query:
            raise ValueError(
                "`judge_base_url` must be an http(s) URL without a query, such as 'http://127.0.0.1:8000/v1'; got "
                f"{redact_url(base_url)!r}."
            )
        self.base_url = api_root(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        variable, _ = judge_key(self.base_url, api_key_env, allow_insecure_key)
        self.api_key_env = variable or api_key_env or "OPENAI_API_KEY"  # named in the hint of an HTTP 401
        key = os.environ.get(variable) if variable else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._model = model
        self._lock = threading.Lock()
        self.session = judge_session(self.base_url)
        pool = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max_in_flight)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)

    # ---- identity ---------------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The served model judged with (asked of the endpoint on first use when not given)."""
        with self._lock:
            if self._model is None:
                self._model = self._first_model(self._get_models(self.max_retries + 1, self.timeout))
            return self._model

    @property
    def name(self) -> str:
        return f"openai-{PROMPT_VERSION}:{redact_url(self.base_url)}:{self.model}"

    def criteria(self) -> tuple[str, ...]:
        return tuple(CRITERIA)

    def close(self) -> None:
        self.session.close()

    # ---- the endpoint -----------------------------------------------------------------------------------------
    def check_reachable(self) -> None:
        """One quick `GET /models`: raises `JudgeError` naming the setting to fix when the endpoint does not answer,
        refuses the key, or does not serve `judge_model`."""
        try:
            models = self._get_models(1, min(self.timeout, 10.0), _REACH)
        except JudgeError as err:
            if self._model is not None and "HTTP 404" in str(err):
                return  # no /models route, but it answers; the model is named
            raise
        with self._lock:
            if self._model is None:
                self._model = self._first_model(models)
            elif models and self._model not in models:
                shown = ", ".join(repr(m) for m in models[:10]) + (", ..." if len(models) > 10 else "")
                raise JudgeError(
                    f"`judge_model`: the judge endpoint {self.base_url} does not serve {self._model!r}; it serves "
                    f"{shown}. Correct `judge_model`, or leave it unset to use the first."
                )

    def _get_models(
        self, attempts: int, timeout: float, what: str = "Listing the judge endpoint's models"
    ) -> list[str]:
        url = f"{self.base_url}/models"
        data = self._send("GET", url, None, attempts, timeout, what)
        try:
            entries = data["data"]
            return [m["id"] for m in entries if not m.get("parent")]
        except (KeyError, TypeError) as err:
            raise JudgeError(
                f"`judge_base_url`: {url} answered something that is not an OpenAI model list ({str(data)[:200]}). "
                "Point `judge_base_url` at the API root of an OpenAI-compatible server (ending in /v1)."
            ) from err

    def _first_model(self, models: list[str]) -> str:
        if not models:
            raise JudgeError(f"`judge_model`: the judge endpoint {self.base_url} lists no model; set `judge_model`.")
        return models[0]

    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, attempts: int, timeout: float, what: str
    ) -> Any:
        """The JSON answer to one request, retried on connection errors, timeouts, HTTP 429 and 5xx."""
        last, retry_after = "", None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.delay(attempt, retry_after))
            try:
                response = self.session.request(method, url, json=body, headers=self.headers, timeout=timeout)
            except (requests.ConnectionError, requests.Timeout) as err:
                last, retry_after = f"{type(err).__name__}: {err}", None
                continue
            except requests.RequestException as err:
                raise JudgeError(f"{what}: the request to {url} failed ({err}).") from err
            status = response.status_code
            if status == 429 or status >= 500:
                last, retry_after = f"HTTP {status}: {response.text[:300]}", response.headers.get("Retry-After")
                continue
            if status >= 400:
                raise JudgeError(f"{what}: {url} answered HTTP {status}: {response.text[:500]}. {self._hint(status)}")
            try:
                return response.json()
            except ValueError as err:
                raise JudgeError(f"{what}: {url} answered with no JSON: {response.text[:300]!r}.") from err
        if what == _REACH:
            raise JudgeError(f"`judge_base_url`: the judge endpoint at {url} does not answer ({last}). {_START_HINT}")
        raise JudgeError(
            f"{what}: {url} failed after {attempts} attempts (1 + `judge_max_retries`={attempts - 1}); the last: "
            f"{last}. Check the endpoint (`judge_base_url`), or raise `judge_max_retries` / `judge_timeout`."
        )

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry `attempt` (1, 2, ...): `backoff` doubled each time, or the server's
        `Retry-After` if longer, at most `MAX_BACKOFF`."""
        delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), MAX_BACKOFF))
            except ValueError:
                pass
        return delay

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return f"Put a valid API key in the environment variable named by `judge_api_key_env` ({self.api_key_env})."
        if status == 404:
            return "Check `judge_base_url` (the API root, ending in /v1) and `judge_model`."
        return "Check `judge_model` and the endpoint's documentation."

    # ---- judging ----------------------------------------------------------------------------------------------
    def judge(self, criterion: str, prompts: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        check_criterion(self, criterion)
        check_lengths(prompts, answers)

        def one(i: int) -> Verdict:
            p, text = self._ask(pointwise_messages(criterion, prompts[i], answers[i]), YES_WORDS, NO_WORDS)
            return Verdict(p is not None and p >= 0.5, p, text)

        return self._map(one, len(prompts), f"Judging {criterion}")

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        check_lengths(prompts, first, second)

        def one(i: int) -> float:
            p, _ = self._ask(pairwise_messages(prompts[i], first[i], second[i]), FIRST_WORDS, SECOND_WORDS)
            return 0.5 if p is None else p

        return self._map(one, len(prompts), "Comparing answers")

    def _ask(self, chat: Messages, positive: Sequence[str], negative: Sequence[str]) -> tuple[float | None, str]:
        """(P(positive) or None, the reply's text) for one judge prompt."""
        body = {
            "model": self.model,
            "messages": chat,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        url = f"{self.base_url}/chat/completions"
        data = self._send("POST", url, body, self.max_retries + 1, self.timeout, what="Judging")
        try:
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            content = (choice.get("logprobs") or {}).get("content") or []
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise JudgeError(
                f"Judging: {url} answered something that is not a chat completion: {str(data)[:300]}"
            ) from err
        candidates = []
        if content:
            first = content[0]
            candidates = [(t["token"], t["logprob"]) for t in first.get("top_logprobs") or []]
            if not candidates and "token" in first:
                candidates = [(first["token"], first["logprob"])]
        p = probability_from_logprobs(candidates, positive, negative)
        if p is None:
            p = probability_from_text(text, positive, negative)
        return p, text

    def _map(self, one: Callable[[int], T], n: int, desc: str) -> list[T]:
        if n == 0:
            return []
        self.model  # noqa: B018 - resolve the model once, before the threads start
        return map_in_flight(one, n, self.max_in_flight, desc, "item", progress=n >= PROGRESS_MIN_ITEMS)
