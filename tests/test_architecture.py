"""The shape the project keeps: `trainer.py` wires the concerns and stays small, and nothing below the trainer imports
it. Read from the source with `ast`: no model, no import of the package's heavy parts."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trl_soft"
TRAINER_LINES = 450  # the algorithm and the HF hooks; the run folder, inputs and engines live elsewhere
INIT_LINES = 80


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def test_trainer_stays_small():
    source = PACKAGE / "trainer.py"
    lines = len(source.read_text(encoding="utf-8").splitlines())
    assert lines < TRAINER_LINES, f"trainer.py has {lines} lines; move what is not the algorithm into its own module"
    trainer = next(n for n in _tree(source).body if isinstance(n, ast.ClassDef) and n.name == "SOFTTrainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    length = init.end_lineno - init.lineno + 1
    assert length < INIT_LINES, f"SOFTTrainer.__init__ has {length} lines"


def test_nothing_below_the_trainer_imports_it():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE or path.name == "trainer.py":
            continue  # the package's front door re-exports the trainer; scripts reach it through the package
        if path.parent.name == "scripts":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] == "trainer":
                importers.append(str(path.relative_to(PACKAGE)))
    assert not importers, f"these modules import the trainer: {importers}"
