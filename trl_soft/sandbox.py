"""Rendering a user's Jinja template with bounds on what it may cost.

Jinja's sandbox (`ImmutableSandboxedEnvironment`) keeps a template away from Python's internals, but not from
`{{ 'x' * 10**9 }}` (a gigabyte), `{{ 10**10**10 }}` (hours) or nested loops: its only bound is on `range`. Jinja even
folds such constants while compiling. So the template is compiled and rendered in a separate, isolated interpreter
(`python -I`: no PYTHONPATH, no user site), in the sandbox, under hard limits set by the operating system:

- memory: `MEMORY_LIMIT` bytes of address space (`RLIMIT_AS`);
- time: `TIME_LIMIT` seconds for the whole batch, wall clock (the child is killed) and CPU (`RLIMIT_CPU`);
- size: each rendered text at most `MAX_CHARS` characters (rendering stops as soon as it is longer).

All the texts of one template are rendered by one child (one start, about 0.2 s). A failure is a `TemplateRenderError`
whose `kind` says which: 'syntax', 'security' (the sandbox refused an attribute or call), 'template' (an undefined
name, a bad filter, ...), 'size', 'memory', 'time'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence

from .errors import TemplateRenderError

MAX_CHARS = 100_000  # per rendered text: a benchmark prompt is a few thousand
TIME_LIMIT = 30.0  # seconds for one batch: 817 TruthfulQA prompts take well under one
MEMORY_LIMIT = 1 << 30  # bytes of address space for the child

_CHILD = r"""
import json, resource, sys
request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
memory, cpu = request["memory"], int(request["cpu"]) + 1
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

def answer(**reply):
    sys.stdout.buffer.write(json.dumps(reply).encode("utf-8"))
    sys.exit(0)

try:
    import jinja2
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if request.get("chat"):  # as transformers renders a chat template (its globals, filter and extensions)
        from jinja2 import nodes
        from jinja2.ext import Extension

        class Generation(Extension):  # `{% generation %}...{% endgeneration %}`: only its body is rendered
            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.Scope(body, lineno=lineno)

        def raise_exception(message):
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[Generation, "jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda value, indent=None, **kw: json.dumps(value, indent=indent, ensure_ascii=False)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    else:
        env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    try:
        template = env.from_string(request["source"])
    except jinja2.TemplateSyntaxError as err:
        answer(kind="syntax", message=f"template line {err.lineno}: {err.message}")
    texts = []
    for row in request["rows"]:
        parts, size = [], 0
        for chunk in template.generate(**row):
            size += len(chunk)
            if size > request["max_chars"]:
                answer(kind="size", message=f"a rendered text is longer than {request['max_chars']} characters")
            parts.append(chunk)
        texts.append("".join(parts))
    answer(texts=texts)
except SecurityError as err:
    answer(kind="security", message=str(err))
except jinja2.TemplateError as err:
    answer(kind="template", message=f"{type(err).__name__}: {err}")
except MemoryError:
    answer(kind="memory", message="it needs more than the memory limit")
except RecursionError:
    answer(kind="template", message="RecursionError: it recurses too deeply")
except (OverflowError, ValueError, TypeError, ArithmeticError) as err:
    answer(kind="template", message=f"{type(err).__name__}: {err}")
"""


def render_bounded(
    source: str,
    rows: Sequence[Mapping[str, str]],
    *,
    max_chars: int = MAX_CHARS,
    time_limit: float = TIME_LIMIT,
    memory_limit: int = MEMORY_LIMIT,
    chat: bool = False,
) -> list[str]:
    """`source` rendered once per row (each row: the template's variables), in the sandbox, in a child process under
    the limits above. Raises `TemplateRenderError`. `chat`: render as transformers renders a chat template (its
    `raise_exception`, `strftime_now`, `tojson`, loop controls and `{% generation %}`; undefined names are empty)."""
    if not rows:
        return []
    request = {"source": source, "rows": [dict(r) for r in rows], "max_chars": max_chars, "memory": memory_limit,
               "cpu": time_limit, "chat": chat}
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD], input=json.dumps(request).encode("utf-8"), capture_output=True,
            timeout=time_limit, env={}, check=False,
        )
    except subprocess.TimeoutExpired:
        raise TemplateRenderError("time", f"it takes longer than {time_limit:g} s to render") from None
    try:
        reply = json.loads(done.stdout.decode("utf-8"))
    except ValueError:
        if done.returncode < 0 or b"MemoryError" in done.stderr:  # killed: the CPU limit (SIGXCPU), or out of memory
            raise TemplateRenderError("time" if done.returncode == -24 else "memory",
                                      "it exceeds the time or memory limit of a template render") from None
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise TemplateRenderError("template", f"the renderer failed ({tail[0]})") from None
    if "texts" in reply:
        return list(reply["texts"])
    raise TemplateRenderError(reply["kind"], reply["message"])


def check_chat_template(tokenizer, conversations: Sequence[list[dict]], who: str) -> None:
    """The tokenizer's chat template rendered for `conversations` (a run's own: its longest prompts with their
    exemplars) under the same bounds as a user's template, before the run renders it in-process without them;
    `ValueError` naming `who` (the setting that chose the template) when it does not stay within them."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default") or next(iter(source.values()), None)
    if not isinstance(source, str) or not conversations:
        return
    specials = {name: str(getattr(tokenizer, name, None) or "") for name in ("bos_token", "eos_token", "pad_token")}
    rows = [{"messages": list(messages), "add_generation_prompt": True, **specials} for messages in conversations]
    try:
        render_bounded(source, rows, chat=True, time_limit=TIME_LIMIT)  # read when called (a test may lower it)
    except TemplateRenderError as err:
        if err.kind in ("size", "memory", "time", "security"):
            raise ValueError(
                f"{who}: its chat template cannot be rendered within the limits ({err}; at most {MAX_CHARS} "
                f"characters per text, {TIME_LIMIT:g} s, {MEMORY_LIMIT >> 20} MiB). Use another template "
                "(`chat_template_path`), or `prompt_format='plain'`."
            ) from None
        # a template error on these messages is transformers' to report, as it would in the run


__all__ = ["MAX_CHARS", "check_chat_template", "MEMORY_LIMIT", "TIME_LIMIT", "TemplateRenderError", "render_bounded"]
