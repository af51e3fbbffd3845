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


LOOP_STEPS = ("_train_rounds", "_regenerate", "_filter", "_order", "_fine_tune", "_evaluate", "_decide",
              "_continue_from", "_start", "_finish")


def test_the_loop_steps_take_no_resume_flag():
    """Whether the run resumes is the run store's business (opened once by `train()`, it answers what is done): no
    step of the loop takes a `resume` parameter, and none reads `Round.resumed`."""
    trainer = next(n for n in _tree(PACKAGE / "trainer.py").body
                   if isinstance(n, ast.ClassDef) and n.name == "SOFTTrainer")
    methods = {n.name: n for n in trainer.body if isinstance(n, ast.FunctionDef)}
    assert set(LOOP_STEPS) <= set(methods)
    for name in LOOP_STEPS:
        arguments = [a.arg for a in methods[name].args.args + methods[name].args.kwonlyargs]
        assert "resume" not in arguments, f"SOFTTrainer.{name} takes `resume`"
        reads = [n.attr for n in ast.walk(methods[name]) if isinstance(n, ast.Attribute)]
        assert "resumed" not in reads, f"SOFTTrainer.{name} reads `.resumed`"


def test_the_final_round_is_computed_in_one_place():
    """`acceptance.final_round` is called by the round's decision only (`decision.py`); the rest read the result."""
    callers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "final_round":
                callers.append(str(path.relative_to(PACKAGE)))
    assert callers == ["decision.py"], callers
