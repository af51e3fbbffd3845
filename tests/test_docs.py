"""The documentation: docs/configuration.md is generated from `SOFTConfig` and must match it; the code blocks of the
pages hold (python blocks parse and import what exists, the ones marked runnable run, the flags of the shell commands
exist); the site's link rewriting (tools/mkdocs_hooks.py) points links at pages and reports broken ones.

The marking convention (DEVELOPERS.md, "Documentation"): an HTML comment on the line before a fence,
`<!-- runnable -->` (the block is run, offline, in a temporary folder) or `<!-- sketch -->` (pseudo-code: not
parsed). The strict site build itself is `make docs` (CI runs it).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE, SKETCH = "<!-- runnable -->", "<!-- sketch -->"
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?:(?P<fence>`{3,})(?!.*`)|(?P<tilde>~{3,}))[ \t]*(?P<lang>[\w+-]*)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SCRIPT_DIRS = ("benchmarks/", "tools/", "examples/", "docs/")  # where the repository's scripts lie


def doc_pages() -> list[Path]:
    """Every Markdown page of the site: docs/ and the repository's own pages shown there (tools/mkdocs_hooks.py)."""
    return sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md", ROOT / "DEVELOPERS.md",
                                                    ROOT / "benchmarks" / "README.md"]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str  # the HTML comment on the line before the fence, or ""

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"] or opening["tilde"]  # (no backtick after a ``` fence)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = previous if previous.startswith("<!--") else ""
        blocks.append(Block(page, i + 1, opening["lang"].lower(), "\n".join(body), mark))
        i = end + 1
    return blocks


def all_blocks(*langs: str) -> list[Block]:
    return [b for page in doc_pages() for b in code_blocks(page) if b.lang in langs]


def test_configuration_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "docs/make_config_reference.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/configuration.md is stale: run `python docs/make_config_reference.py`"


def test_code_blocks_are_found():
    """The extraction sees indented fences (in list items), languages and marks: the checks below are not vacuous."""
    python = all_blocks("python")
    assert len(python) >= 5 and len(all_blocks("bash")) >= 10
    assert any(b.mark == RUNNABLE for b in python) and any(b.mark == SKETCH for b in python)
    assert any(b.page.name == "scaling.md" and "vllm_cpu_requirements" in b.code for b in all_blocks("bash"))


def test_python_blocks_parse_and_import_what_exists():
    checked = 0
    for block in all_blocks("python", "py"):
        if block.mark == SKETCH:
            continue
        try:
            tree = ast.parse(block.code)
        except SyntaxError as error:
            pytest.fail(f"{block}: not valid Python ({error}); mark pseudo-code with {SKETCH} before the fence")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl_soft":
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{block}: `from {node.module} import` {missing}: no such name"
                checked += 1
    assert checked >= 4


RUN_BLOCKS = """
import json, sys, traceback
failures = []
for where, code in json.load(sys.stdin):
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except BaseException:
        failures.append(f"{where}:\\n{traceback.format_exc()}")
print("\\n".join(failures), file=sys.stderr)
sys.exit(1 if failures else 0)
"""


def test_runnable_blocks_run(tmp_path):
    """The blocks marked runnable, each in a fresh namespace, in one process (one import of trl_soft), offline."""
    blocks = [b for b in all_blocks("python", "py") if b.mark == RUNNABLE]
    assert blocks, f"no python block is marked {RUNNABLE}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", RUN_BLOCKS], input=json.dumps([[str(b), b.code] for b in blocks]), text=True,
        capture_output=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


# ---- shell blocks: the flags they use exist ---------------------------------------------------------------------------
HELP_ARGS = {  # trl-soft command -> the arguments that print its options
    "train": ["train"], "demo": ["demo"], "eval": ["eval"], "eval --behaviour": ["eval", "--behaviour=harmful"],
    "check": ["check"], "report": ["report"], "plan": ["plan"],
}


@cache
def cli_flags(command: str) -> frozenset[str]:
    from trl_soft.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(SystemExit):
            main([*HELP_ARGS[command], "--help"])
    flags = set(FLAG.findall(out.getvalue()))
    assert "--help" in flags, f"`trl-soft {command} --help` printed no options"
    if command in ("train", "demo", "plan"):
        flags.add("--config")  # TrlParser reads `--config file.yaml` before parsing, so its help does not list it
    return frozenset(flags)


CONTROL = {"&&", "||", ";", "|", "&", "(", ")"}


def commands(code: str) -> list[list[str]]:
    """The simple shell commands of a block (continuation lines joined, comments dropped, split at `&&`, `;`, `|`),
    each as its words."""
    simple: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for word in lexer:
            if word in CONTROL:
                simple.append(words)
                words = []
            else:
                words.append(word)
        simple.append(words)
    return [words for words in simple if words]


def flags_after(words: list[str]) -> list[str]:
    return [w.lstrip("[").split("=")[0].rstrip("]") for w in words if w.lstrip("[").startswith("--")]


def check_shell_block(block: Block) -> int:
    """Raises on an unknown command or flag; returns how many commands it checked."""
    checked = 0
    for words in commands(block.code):
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # VAR=value before the command, or alone
            name, _, value = words.pop(0).partition("=")
            if name.endswith("_FLAGS"):  # MODEL_FLAGS="--dtype ..." (docs/scaling.md): train flags, used below
                unknown = set(FLAG.findall(value)) - cli_flags("train")
                assert not unknown, f"{block}: {sorted(unknown)} in {name} are not `trl-soft train` flags"
                checked += 1
        if not words:
            continue
        if Path(words[0]).name == "trl-soft":
            command = words[1] if len(words) > 1 else ""
            flags = flags_after(words[2:])
            key = "eval --behaviour" if command == "eval" and "--behaviour" in flags else command
            assert key in HELP_ARGS, f"{block}: `trl-soft {command}` is not a trl-soft command"
            unknown = set(flags) - cli_flags(key)
            assert not unknown, f"{block}: `trl-soft {key}` has no {sorted(unknown)} (see `trl-soft {key} --help`)"
            checked += 1
            continue
        # a script of the repository run by python, accelerate launch, torchrun, ...: the flags after it
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
        if script is None or not words[script].startswith(SCRIPT_DIRS):
            continue
        path, flags = words[script], flags_after(words[script + 1:])
        assert (ROOT / path).is_file(), f"{block}: there is no {path}"
        if path == "examples/soft_llama.py":
            unknown = set(flags) - cli_flags("train")
            assert not unknown, f"{block}: examples/soft_llama.py takes train's flags; no {sorted(unknown)}"
        else:
            source = (ROOT / path).read_text(encoding="utf-8")
            unknown = [f for f in flags if f'"{f}"' not in source and f"'{f}'" not in source]
            assert not unknown, f"{block}: {path} defines no {unknown}"
        checked += 1
    return checked


def test_shell_blocks_use_existing_commands_and_flags():
    blocks = all_blocks("bash", "sh", "shell", "console")
    checked = sum(check_shell_block(block) for block in blocks)
    assert checked >= 20, f"only {checked} commands checked: is the extraction broken?"


def test_a_wrong_flag_in_a_shell_block_is_caught():
    page = ROOT / "docs" / "quickstart.md"
    with pytest.raises(AssertionError, match="--num_round"):
        check_shell_block(Block(page, 1, "bash", "trl-soft train --num_round 3 \\\n    --output_dir out", ""))
    with pytest.raises(AssertionError, match="not a trl-soft command"):
        check_shell_block(Block(page, 1, "bash", "trl-soft evaluate --model x", ""))
    with pytest.raises(AssertionError, match="--no_such"):
        check_shell_block(Block(page, 1, "bash", ".venv/bin/python benchmarks/bench_generation.py --no_such 1", ""))
    with pytest.raises(AssertionError, match="--lora_rank"):
        check_shell_block(Block(page, 1, "bash", 'MODEL_FLAGS="--use_peft --lora_rank 16"', ""))
    with pytest.raises(AssertionError, match="no benchmarks/bench_gone.py"):
        check_shell_block(Block(page, 1, "bash", "cd x && python benchmarks/bench_gone.py", ""))
    # `trl-soft` as a folder name is not the command; after `&&` it is
    assert check_shell_block(Block(page, 1, "bash", "git clone <repo> trl-soft && cd trl-soft", "")) == 0
    with pytest.raises(AssertionError, match="--nope"):
        check_shell_block(Block(page, 1, "bash", "cd out && trl-soft report . --nope", ""))


# ---- the site's link rewriting (tools/mkdocs_hooks.py) --------------------------------------------------------------
@pytest.fixture(scope="module")
def hooks():
    if importlib.util.find_spec("mkdocs") is None and not os.environ.get("CI"):
        pytest.skip("the docs extra is not installed (`make docs` installs it)")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        yield importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.remove(str(ROOT / "tools"))


class Config:
    """The two mkdocs.yml settings the link rewriting reads."""

    def __init__(self, repo_url: str | None = None):
        self.repo_url, self.extra = repo_url, {}


def test_links_between_repository_files_become_links_between_pages(hooks):
    readme = "See [behaviour](docs/behaviour.md#judges) and [the benchmarks](benchmarks/README.md)."
    assert hooks.rewrite_links(readme, "README.md", "index.md", Config()) == (
        "See [behaviour](behaviour.md#judges) and [the benchmarks](benchmarks.md)."
    )
    page = "[dev](../DEVELOPERS.md), [api](api/trainer.md), ![plot](images/soft_vs_soft_plus_6_rounds.png)"
    assert hooks.rewrite_links(page, "docs/concepts.md", "concepts.md", Config()) == (
        "[dev](developers.md), [api](api/trainer.md), ![plot](images/soft_vs_soft_plus_6_rounds.png)"
    )
    bench = "[b](../docs/behaviour.md), ![p](../docs/images/soft_vs_soft_plus_6_rounds.png)"
    assert hooks.rewrite_links(bench, "benchmarks/README.md", "benchmarks.md", Config()) == (
        "[b](behaviour.md), ![p](images/soft_vs_soft_plus_6_rounds.png)"
    )
    up = "[c](../concepts.md) [home](../../README.md)"
    assert hooks.rewrite_links(up, "docs/api/index.md", "api/index.md", Config()) == "[c](../concepts.md) [home](../index.md)"


def test_links_to_source_files_go_to_the_repository_or_become_text(hooks):
    text = "in [`examples/accelerate_configs/`](../examples/accelerate_configs); [cli](../trl_soft/cli.py#L1)"
    assert hooks.rewrite_links(text, "docs/scaling.md", "scaling.md", Config()) == (
        "in `examples/accelerate_configs/`; cli"
    )
    assert hooks.rewrite_links(text, "docs/scaling.md", "scaling.md", Config("https://example.org/trl-soft/")) == (
        "in [`examples/accelerate_configs/`](https://example.org/trl-soft/tree/main/examples/accelerate_configs); "
        "[cli](https://example.org/trl-soft/blob/main/trl_soft/cli.py#L1)"
    )


def test_code_urls_and_anchors_are_left_alone(hooks):
    text = (
        "```bash\ncat [x](../DEVELOPERS.md)\n```\n`[y](../DEVELOPERS.md)` [arxiv](https://arxiv.org/abs/2402.07610) "
        "[top](#judges) [mail](mailto:a@b.c)"
    )
    assert hooks.rewrite_links(text, "docs/behaviour.md", "behaviour.md", Config()) == text


def test_a_broken_link_is_reported_not_dropped(hooks, caplog):
    text = "[gone](../benchmarks/NO_SUCH.md) and [outside](../../elsewhere.md)"
    with caplog.at_level(logging.WARNING):
        assert hooks.rewrite_links(text, "docs/behaviour.md", "behaviour.md", Config()) == text
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "NO_SUCH.md" in warned[0] and "elsewhere.md" in warned[1]
