"""The judges' settings: which judge answers the behaviour questions (`behaviour_judge`), which compares answers
(`pairwise_judge`), and how a model judge is reached.

Each setting is declared once below (`setting`: default, help, `SOFTConfig` field name), and `SOFTConfig` gets its flat
`judge_*` fields from there; `JudgeSettings.from_config` builds one object from them, and every check here names the
`SOFTConfig` field and the fix. Nothing is loaded or contacted until `build_pointwise` / `build_pairwise` / `check_reachable` are called.

The key of an 'openai' judge (`judge_key`, in openai.py): the value of the environment variable `judge_api_key_env` names, sent to
`judge_base_url` only over https or to a loopback address unless `judge_allow_insecure_key` says otherwise. Left unset,
`judge_api_key_env` means `$OPENAI_API_KEY` for OpenAI's own API (`api.openai.com`) and no key for any other host: a
key made for one service never goes to another unless the config names its variable. A URL holding credentials is
refused (`trl_soft.security`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..models import check_model_path
from ..security import host_of, is_env_name, redact_url, url_credentials_error
from ..settings import ConcernSettings, setting
from .base import PairwiseJudge, PointwiseJudge
from .cache import CachedJudge
from .hf import HFJudge
from .openai import OpenAIJudge, judge_key
from .rules import RuleJudge

logger = logging.getLogger(__name__)

POINTWISE_JUDGES = ("rules", "hf", "openai")
PAIRWISE_JUDGES = ("none", "hf", "openai")
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class JudgeSettings(ConcernSettings):
    """Which judges a run uses and how to reach them; built once from `SOFTConfig`."""

    # How a judge is reached, not what it decides.
    NOT_FINGERPRINTED = frozenset(
        {"base_url", "api_key_env", "allow_insecure_key", "timeout", "max_retries", "batch_size"}
    )

    pointwise: str = setting(
        "rules",
        "Pointwise judge of refusals, admissions and harmful requests: 'rules' (refusal phrases), 'hf' (a "
        "local model, `judge_model`) or 'openai' (any OpenAI-compatible endpoint, `judge_base_url`).",
        name="behaviour_judge",
    )
    pairwise: str = setting(
        "none", "Judge of which of two answers is better, for 'helpful': 'none', 'hf' or 'openai'.",
        name="pairwise_judge",
    )
    model: str | None = setting(
        None, "The judge model: a local path or hub id for 'hf'; the served model name for 'openai'.",
        name="judge_model",
    )
    base_url: str | None = setting(
        None, "Base URL of the OpenAI-compatible judge endpoint, e.g. http://host:8000/v1.",
        name="judge_base_url",
    )
    # None: $OPENAI_API_KEY for api.openai.com only (see `judge_key`)
    api_key_env: str | None = setting(
        None,
        "Name of the environment variable holding the judge endpoint's API key (never the key itself; "
        "'' for no key). Default: $OPENAI_API_KEY, sent only to api.openai.com; any other host gets no key "
        "unless its variable is named here. The key goes only over https or to a loopback address.",
        name="judge_api_key_env",
    )
    allow_insecure_key: bool = setting(
        False,
        "Send the judge's key over plain http to a `judge_base_url` that is not this machine (a network "
        "you trust). Off: such a config is refused before the run starts.",
        name="judge_allow_insecure_key",
    )
    timeout: float = setting(60.0, "Seconds per judge request before it is retried.", name="judge_timeout")
    max_retries: int = setting(
        3, "Retries of a failed judge request (connection errors, timeouts, 429, 5xx).",
        name="judge_max_retries",
    )
    batch_size: int = setting(8, "Pairs per forward pass of an 'hf' judge.", name="judge_batch_size")

    def check(self) -> None:
        """Reject impossible values, naming the `SOFTConfig` field and the fix. Nothing is loaded or contacted."""
        for attr, choices in (("pointwise", POINTWISE_JUDGES), ("pairwise", PAIRWISE_JUDGES)):
            self.check_choice(attr, choices)
        kinds = self.kinds()
        if "hf" in kinds:
            if not self.model:
                raise self.field_error(
                    "model", "is needed by the 'hf' judge: give a local model folder, a hub id in the local cache, or "
                    "'embedded' for the built-in SmolLM2-135M-Instruct."
                )

            try:
                check_model_path(self.model)
            except FileNotFoundError as err:
                raise self.field_error(
                    "model", f"{self.model!r} is not an existing folder and not a hub model id. Give the folder of a "
                    "saved model, a hub id such as 'org/name', or 'embedded'."
                ) from err
        if "openai" in kinds:
            if not self.base_url:
                raise self.field_error(
                    "base_url", "is needed by the 'openai' judge: the API root of an OpenAI-compatible server, such "
                    "as 'http://127.0.0.1:8000/v1' (a vLLM server) or 'https://api.openai.com/v1'."
                )
            credentials = url_credentials_error(
                self.CONFIG_FIELDS["base_url"], self.base_url, "give the key through `judge_api_key_env` (the name of "
                "the environment variable that holds it)"
            )
            if credentials is not None:
                raise credentials
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.field_error(
                    "base_url", f"must be an http:// or https:// URL such as 'http://127.0.0.1:8000/v1'; got "
                    f"{redact_url(self.base_url)!r}."
                )
            if parts.query or parts.fragment:
                raise self.field_error(
                    "base_url", f"must be the API root, without a query or fragment (a key goes in "
                    f"`judge_api_key_env`); got {redact_url(self.base_url)!r}."
                )
        if self.api_key_env and not is_env_name(self.api_key_env):
            raise self.field_error(
                "api_key_env", f"must be the name of an environment variable (letters, digits, '_'), or '' for no key; "
                f"got {self.api_key_env!r}."
            )
        if "openai" in kinds:
            judge_key(self.base_url, self.api_key_env, self.allow_insecure_key)  # a key only where it is safe
        if not _is_number(self.timeout) or self.timeout <= 0:
            raise self.field_error("timeout", f"must be a positive number of seconds; got {self.timeout!r}.")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise self.field_error("max_retries", f"must be a whole number >= 0 (0: no retry); got {self.max_retries!r}.")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise self.field_error("batch_size", f"must be a whole number >= 1; got {self.batch_size!r}.")

    def kinds(self) -> tuple[str, ...]:
        """The judge kinds in use (pointwise, then pairwise unless 'none')."""
        return (self.pointwise,) + ((self.pairwise,) if self.pairwise != "none" else ())

    def describe(self, kind: str) -> str:
        """A short description of one judge kind for logs: "rules", "hf (path)", "openai (url, model)"."""
        if kind == "hf":
            return f"hf ({self.model})"
        if kind == "openai":
            return f"openai ({redact_url(self.base_url)}, {self.model or 'first served model'})"
        return kind

    def judge_names(self) -> dict[str, str]:
        """`SOFTConfig` field -> description of the judge it chose, for logs and the run state."""
        return {
            self.CONFIG_FIELDS["pointwise"]: self.describe(self.pointwise),
            self.CONFIG_FIELDS["pairwise"]: self.describe(self.pairwise),
        }

    # ---- building ---------------------------------------------------------------------------------------------
    def build(self, cache_path: str | Path | None = None) -> tuple[PointwiseJudge, PairwiseJudge | None]:
        """Both judges; when both are model judges of one kind they share one judge (one model loaded)."""
        made: dict[str, Any] = {}
        return self.build_pointwise(cache_path, made), self.build_pairwise(cache_path, made)

    def build_pointwise(self, cache_path: str | Path | None = None, made: dict | None = None) -> PointwiseJudge:
        """The `behaviour_judge`, wrapped in a verdict cache at `cache_path` when given."""
        if self.pointwise == "rules":
            judge: Any = RuleJudge()
        else:
            judge = self._model_judge(self.pointwise, {} if made is None else made)
        if cache_path is None:
            return judge

        return CachedJudge(cache_path, pointwise=judge)

    def build_pairwise(self, cache_path: str | Path | None = None, made: dict | None = None) -> PairwiseJudge | None:
        """The `pairwise_judge` (None for 'none'), wrapped in a verdict cache at `cache_path` when given."""
        if self.pairwise == "none":
            return None
        judge = self._model_judge(self.pairwise, {} if made is None else made)
        if cache_path is None:
            return judge

        return CachedJudge(cache_path, pairwise=judge)

    def key_plan(self) -> str:
        """Which environment variable's value goes to which host as the judge's key: names only, never the value."""
        variable, how = judge_key(self.base_url, self.api_key_env, self.allow_insecure_key)
        unset = variable is not None and not os.environ.get(variable)
        return (f"judge key -> {host_of(self.base_url)}: {how}"
                + (f"; ${variable} is not set, so no key is sent" if unset else ""))

    def check_reachable(self) -> None:
        """For 'openai' judges, print where the key goes (`key_plan`) and make one quick request to the endpoint
        (`JudgeError` if it does not answer); else nothing."""
        if "openai" in self.kinds():
            logger.info(self.key_plan())
            judge = self._model_judge("openai", {})
            try:
                judge.check_reachable()
            finally:
                judge.close()

    def _model_judge(self, kind: str, made: dict[str, Any]) -> Any:
        """The HFJudge / OpenAIJudge of these settings, made once per `made` (the settings object holds no judge: it
        travels inside `SOFTConfig`, which the Trainer pickles into every checkpoint)."""
        if kind not in made:
            if kind == "hf":
                made[kind] = HFJudge(self.model, batch_size=self.batch_size)
            else:
                made[kind] = OpenAIJudge(
                    self.base_url, self.model, api_key_env=self.api_key_env, timeout=self.timeout,
                    max_retries=self.max_retries, allow_insecure_key=self.allow_insecure_key,
                )
        return made[kind]
