"""Every exception the package raises of its own, in one module at the bottom of the import graph: any module
can raise or catch one without importing the module that raises it. Importing this module imports nothing of the
package."""

from __future__ import annotations

import signal
from pathlib import Path


class SOFTInterrupted(KeyboardInterrupt):
    """The run stopped on a signal at a safe point; `--resume` continues it. `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, where: str, output_dir: Path | None = None):
        self.signum, self.exit_code = signum, 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"SOFT: stopped by {name} {where}." if output_dir is None else
            f"SOFT: stopped by {name} {where}; the completed rounds are in {str(output_dir)!r}. Continue with "
            "`--resume` (`train(resume_from_checkpoint=True)`)."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SOFTLockError(RuntimeError):
    """Another live process is running SOFT in the same `output_dir`."""


class SOFTResumeError(ValueError):
    """The run in `output_dir` cannot be continued as asked (nothing to resume, damaged files, changed settings)."""


class SOFTFolderError(ValueError):
    """`output_dir` holds files no trl-soft run wrote (no manifest, no lock record): nothing is started or deleted."""


class SOFTSaveError(OSError):
    """Writing a round's artifact failed (a full disk, a lost mount): the message names the round and how to resume."""


class SOFTLinkError(ValueError):
    """A path the run would remove or replace is reached through a symbolic link below its folder."""


class SOFTRoundError(RuntimeError):
    """A round cannot go on (e.g. every generated answer was filtered out); earlier rounds stay on disk."""


class SOFTPremiseError(RuntimeError):
    """`require_premise=True` and the premise check did not hold: nothing was trained."""


class ConfigEnvError(ValueError):
    """A YAML config asks for something only the command line may: a variable of `security.REFUSED_VARIABLES` in its
    `env:` block (without `--allow_loader_env`), a `COMMAND_LINE_ONLY` setting, a key's variable that does not look
    like one, or a key sent to a host only the file names (without `--allow_config_key_hosts`)."""


class PlanError(ValueError):
    """The model's config cannot be planned (a field missing, an unknown size)."""


class TemplateRenderError(ValueError):
    """A template that could not be rendered within the bounds; `kind` says why (see the module docstring)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class EngineError(RuntimeError):
    """The generation engine cannot go on (a server that died or does not answer, weights it cannot load)."""


class EngineStartError(RuntimeError):
    """The generation engine failed to start on a process; every process stops with this same message."""


class EngineUnavailable(ValueError):
    """`generation_backend='vllm'` was asked for where vLLM cannot generate for this run."""


class ServerUnreachable(OSError):
    """No answer from a server: it refused the connection, timed out, or closed it."""


class JudgeError(RuntimeError):
    """A judge could not give its verdicts (an endpoint that stopped answering, a model that failed to load)."""
