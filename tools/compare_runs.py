"""Compare two SOFT output_dirs made from the same config (e.g. `tools/equivalence_run.yaml` before and after a
refactor): every round's generations (answers, filter verdicts, difficulty, training position), metrics, behaviour
answers and verdicts, and the manifest's history must be identical; only timings may differ.

    python tools/compare_runs.py runs/before runs/after [--ignore config_hash]

Prints what it compared and every difference; exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _timing(key: str) -> bool:
    return key.startswith("seconds_") or key in {"created", "updated"}


def _strip(value, ignore: set[str]):
    """`value` without timings and ignored keys, at any depth."""
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if not _timing(k) and k not in ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def _diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
            else:
                _diff(a[key], b[key], f"{where}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b and not (a != a and b != b):  # NaN == NaN here
        out.append(f"{where}: {str(a)[:120]!r} != {str(b)[:120]!r}")


def _load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def compare(before: Path, after: Path, ignore: set[str]) -> tuple[list[str], list[str]]:
    files = sorted(
        p.relative_to(before) for p in before.rglob("*")
        if p.suffix in (".json", ".jsonl") and not {"model", "final_model", "checkpoints"} & set(p.parts)
        and p.name not in {"judge_cache.jsonl"} and "engine_weights" not in p.parts
    )
    compared, differences = [], []
    for rel in files:
        if not (after / rel).is_file():
            differences.append(f"{rel}: missing after")
            continue
        compared.append(str(rel))
        _diff(_strip(_load(before / rel), ignore), _strip(_load(after / rel), ignore), str(rel), differences)
    return compared, differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], help="keys to leave out at any depth")
    args = parser.parse_args(argv)
    compared, differences = compare(args.before, args.after, set(args.ignore))
    print(f"compared {len(compared)} files: {', '.join(compared)}")
    for line in differences:
        print(f"DIFF {line}")
    print("identical (timings aside)" if not differences else f"{len(differences)} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
