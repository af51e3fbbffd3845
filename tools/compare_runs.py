"""Compare two SOFT output_dirs made from the same config (e.g. `tools/equivalence_run.yaml` before and after a
refactor): every round's generations (answers, filter verdicts, difficulty, training position), metrics, behaviour
answers and verdicts, and the manifest's history must be identical; only timings may differ.

    python tools/compare_runs.py runs/before runs/after [--ignore config_hash] [--rtol train_loss=1e-6] [--tensors]
        [--leftovers]

`--rtol KEY=TOL` compares the numbers under KEY (at any depth) to a relative tolerance instead of exactly;
`--tensors` also compares every model folder's safetensors (`round_*/model`, `final_model`) tensor by tensor,
bitwise, and the two runs' file lists (checkpoints aside); `--leftovers` checks that `after` holds no `*.tmp` file,
no `*.partial` folder, no `round_*/checkpoints` folder and no held `*.lock`.

Prints what it compared and every difference; exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _close(a, b, rtol: float | None) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return rtol is not None and numbers and abs(a - b) <= rtol * max(abs(a), abs(b))


def _diff(a, b, where: str, out: list[str], rtol: dict[str, float] | None = None, key: str | None = None) -> None:
    rtol = rtol or {}
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out, rtol, k)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out, rtol, key)
    elif a != b and not (a != a and b != b) and not _close(a, b, rtol.get(key)):  # NaN == NaN here
        out.append(f"{where}: {str(a)[:120]!r} != {str(b)[:120]!r}")


def _load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def compare(
    before: Path, after: Path, ignore: set[str], rtol: dict[str, float] | None = None
) -> tuple[list[str], list[str]]:
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
        _diff(_strip(_load(before / rel), ignore), _strip(_load(after / rel), ignore), str(rel), differences, rtol)
    return compared, differences


def _files(run: Path) -> set[Path]:
    """The run's files, leftovers (checked by `leftovers`) aside."""
    return {
        p.relative_to(run) for p in run.rglob("*") if p.is_file() and p.suffix not in (".tmp", ".lock")
        and "checkpoints" not in p.parts and not any(part.endswith(".partial") for part in p.parts)
    }


def compare_tensors(before: Path, after: Path) -> tuple[list[str], list[str]]:
    """Every safetensors file of `before`'s model folders against `after`'s, tensor by tensor and bit for bit; and the
    two runs' file lists (checkpoints aside)."""
    import torch
    from safetensors.torch import load_file

    differences = [f"{rel}: only {side}" for side, extra in (("before", _files(before) - _files(after)),
                                                             ("after", _files(after) - _files(before)))
                   for rel in sorted(extra)]
    compared = []
    for rel in sorted(p for p in _files(before) if p.suffix == ".safetensors" and {"model", "final_model"} & set(p.parts)):
        if not (after / rel).is_file():
            continue  # reported above
        compared.append(str(rel))
        a, b = load_file(before / rel), load_file(after / rel)
        differences += [f"{rel}:{name}: only in {'after' if name not in a else 'before'}" for name in sorted(set(a) ^ set(b))]
        for name in sorted(set(a) & set(b)):
            x, y = a[name], b[name]
            if x.dtype != y.dtype or x.shape != y.shape:
                differences.append(f"{rel}:{name}: {x.dtype}{list(x.shape)} != {y.dtype}{list(y.shape)}")
            elif not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                gap = (x.double() - y.double()).abs().max().item() if x.is_floating_point() else float("nan")
                differences.append(f"{rel}:{name}: tensors differ (max abs difference {gap:.3g})")
    return compared, differences


def leftovers(run: Path) -> list[str]:
    """What an interrupted-then-finished run must not leave behind: temp files, partial folders, checkpoints, a held
    lock."""
    import fcntl

    found = [str(p.relative_to(run)) for p in sorted(run.rglob("*.tmp"))]
    found += [str(p.relative_to(run)) + "/" for p in sorted(run.rglob("*.partial")) if p.is_dir()]
    found += [str(p.relative_to(run)) + "/" for p in sorted(run.glob("round_*/checkpoints")) if p.is_dir()]
    for lock in sorted(run.rglob("*.lock")):
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the descriptor
        except BlockingIOError:
            found.append(f"{lock.relative_to(run)} (held)")
        finally:
            os.close(fd)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], help="keys to leave out at any depth")
    parser.add_argument("--rtol", action="append", default=[], metavar="KEY=TOL", help="relative tolerance for KEY")
    parser.add_argument("--tensors", action="store_true", help="also compare the model folders' tensors, bitwise")
    parser.add_argument("--leftovers", action="store_true", help="also check `after` for leftovers")
    args = parser.parse_args(argv)
    rtol = {key: float(tol) for key, _, tol in (item.partition("=") for item in args.rtol)}
    compared, differences = compare(args.before, args.after, set(args.ignore), rtol)
    if args.tensors:
        tensor_files, tensor_differences = compare_tensors(args.before, args.after)
        compared, differences = compared + tensor_files, differences + tensor_differences
    if args.leftovers:
        differences += [f"leftover: {item}" for item in leftovers(args.after)]
    print(f"compared {len(compared)} files: {', '.join(compared)}")
    for line in differences:
        print(f"DIFF {line}")
    print("identical (timings aside)" if not differences else f"{len(differences)} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
