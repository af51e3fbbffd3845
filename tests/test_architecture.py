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


# ---- an import graph that only goes down ----------------------------------------------------------------------------
# Every module of the package in one layer, bottom to top. A module imports its own layer or the ones below it, never
# one above; `name.` stands for a subpackage and every module in it. A new module must be placed here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations: exceptions, shared settings, output, security, files, processes, the run folder's records", (
        "errors", "settings", "progress", "security", "files", "distributed", "interrupts", "sandbox", "threads",
        "overlap", "quantization", "memory", "state", "config_file",
    )),
    ("what a run reads: prompts, principles, exemplars, datasets, models", ("prompting", "data", "models",
                                                                           "interpolation")),
    ("generation and its engines", ("generation", "engines", "engines.")),
    ("judges", ("judges", "judges.")),
    ("the concerns a round is scored and decided with", (
        "filters", "aligned", "curriculum", "sampler", "evaluation", "evaluation.likelihood",
        "evaluation.multiple_choice", "evaluation.hhh", "evaluation.truthfulqa", "evaluation.benchmarks",
        "evaluation.validation", "evaluation.diagnostics", "behaviour", "behaviour.", "acceptance", "callbacks",
        "decision",
    )),
    ("a run: its rounds, its folder, its inputs, the round evaluator, its reports", (
        "rounds", "run_folder", "run_store", "inputs", "evaluation.suite", "reporting", "reporting.",
    )),
    ("the configuration (builds every concern's settings)", ("config",)),
    ("the trainer", ("trainer",)),
    ("the package's front door", ("",)),
    ("the scripts", ("scripts", "scripts.")),
    ("the console script", ("cli",)),
)
# The only imports inside a function: the first use of an optional dependency (an extra in pyproject.toml, or a library
# the package does not require), each the one import of it, so that `import trl_soft` neither needs nor loads it.
LAZY_IMPORTS = {
    ("engines.choice", "trl_soft.engines.vllm_modules"): "vllm (the `vllm` extra), imported by engines/vllm_modules.py",
    ("reporting.plots", "trl_soft.reporting.drawing"): "matplotlib (the `plot` extra), imported by reporting/drawing.py",
    ("engines.weights", "deepspeed"): "deepspeed (not a dependency: only a DeepSpeed ZeRO-3 run has it)",
}
OPTIONAL = {"vllm": "engines.vllm_modules", "matplotlib": "reporting.drawing", "deepspeed": None}  # -> who imports it


def _modules() -> dict[str, Path]:
    """Module name relative to the package ('' the package, 'engines' a subpackage, 'engines.choice') -> file."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(what `name` imports: a package module as 'trl_soft.x', anything else by its dotted name; the line; whether
    inside a function). `from .pkg import name` is the submodule when `name` is one, else the package."""
    tree = _tree(path)
    inner = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))}
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([p for p in here[: len(here) - node.level + 1] if p] + ([node.module] if node.module else []))
                module = "trl_soft" + (f".{base}" if base else "")
            else:
                module = node.module or ""
            if module.split(".")[0] == "trl_soft":
                local = module.removeprefix("trl_soft").lstrip(".")
                targets = [f"{module}.{alias.name}" if f"{local}.{alias.name}".lstrip(".") in modules else module
                           for alias in node.names]
            else:
                targets = [module]
        else:
            continue
        found += [(target, node.lineno, id(node) in inner) for target in targets if target != "__future__"]
    return found


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if name in members or any(m.endswith(".") and name.startswith(m) for m in members):
            return index
    raise AssertionError(f"trl_soft.{name} is in no layer of tests/test_architecture.py's LAYERS: place it there")


def _local(target: str) -> str | None:
    return target.removeprefix("trl_soft").lstrip(".") if target.split(".")[0] == "trl_soft" else None


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_no_import_goes_up_a_layer():
    """A module imports its own layer or a lower one (`LAYERS`), inside functions too."""
    modules, graph = _graph()
    upward = []
    for name, imports in graph.items():
        for target, line, inner in imports:
            local = _local(target)
            if local is not None and local in modules and _layer(local) > _layer(name):
                upward.append(f"{modules[name].relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"('{LAYERS[_layer(local)][0]}' is above '{LAYERS[_layer(name)][0]}')"
                              + (" inside a function" if inner else ""))
    assert not upward, "imports that go up a layer:\n  " + "\n  ".join(upward)


def test_no_import_circles():
    """No module reaches itself through the package's imports, counting those inside functions."""
    modules, graph = _graph()
    edges = {name: sorted({_local(t) for t, _, _ in imports if _local(t) in modules} - {name})
             for name, imports in graph.items()}
    circles, state = [], {}

    def visit(name: str, path: list[str]) -> None:  # depth-first; a grey node met again closes a circle
        state[name] = "grey"
        for target in edges[name]:
            if state.get(target) == "grey":
                circles.append(" -> ".join(f"trl_soft.{m}" for m in [*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "black"

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


def test_imports_inside_functions_are_only_the_optional_dependencies():
    """At most one import inside a function per optional dependency (`LAZY_IMPORTS`); everything else is imported at
    the top of its module, where the import graph can be read. An optional dependency is imported by its one module
    (`OPTIONAL`) and that module only inside the function that first needs it, so `import trl_soft` never loads it."""
    modules, graph = _graph()
    inside = sorted((f"{modules[name].relative_to(PACKAGE.parent)}:{line}", name, target)
                    for name, imports in graph.items() for target, line, inner in imports if inner)
    unexpected = [f"{where} imports {target} inside a function" for where, name, target in inside
                  if (name, target) not in LAZY_IMPORTS]
    assert not unexpected, ("imports inside functions (move them to the top of the module; only an optional "
                            "dependency's first use may import it late, see LAZY_IMPORTS):\n  " + "\n  ".join(unexpected))
    assert len(inside) <= len(LAZY_IMPORTS) <= 3, f"one import inside a function per optional dependency: {inside}"
    misplaced = []
    for name, imports in graph.items():
        for target, line, inner in imports:
            top, local = target.split(".")[0], _local(target)
            if top in OPTIONAL and not inner and OPTIONAL[top] != name:
                misplaced.append(f"{modules[name].relative_to(PACKAGE.parent)}:{line} imports {target} at module level")
            if local is not None and local in OPTIONAL.values() and not inner:
                misplaced.append(f"{modules[name].relative_to(PACKAGE.parent)}:{line} imports {target} at module level")
    assert not misplaced, ("an optional dependency must be imported only by its module, and that module only on first "
                           "use (`OPTIONAL`, `LAZY_IMPORTS`):\n  " + "\n  ".join(misplaced))
