"""Prompt sets, round schedules and the validation set.

Loaders take either a hub dataset name (for users with a network) or a local path (JSON/JSONL/CSV/Parquet/text file,
or a folder of them), and the word `demo` for the prompts shipped with trl-soft.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from .files import json_kind, json_lines, read_text
from .prompting import asset_path

DATA_DIR_ENV = "TRL_SOFT_DATA_DIR"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The folder of offline evaluation data: an explicit one, else `$TRL_SOFT_DATA_DIR`, else None (the hub)."""
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def load_prompt_dataset(source: str, split: str = "train", config_name: str | None = None) -> Dataset:
    """Load a prompt dataset from `demo`, a local file or folder, or the hub. Local files are checked first (UTF-8,
    not empty, one JSON object per line), so a bad file is named with its line instead of failing inside `datasets`."""
    if source == "demo":
        source = str(asset_path("demo_prompts.jsonl"))
    path = Path(source).expanduser()
    if path.is_file():
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"`prompts_dataset`: cannot read {path.suffix!r} files; use one of {sorted(LOCAL_FORMATS)}."
            )
        check_prompt_file(path)
        return _load_local(path, lambda: load_dataset(builder, data_files=str(path), split="train"))
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in LOCAL_FORMATS)
        if not files:
            raise ValueError(
                f"`prompts_dataset`: the folder {path} holds no data file ({', '.join(sorted(LOCAL_FORMATS))}). "
                "Put the prompts there, or give the file itself."
            )
        for file in files:
            check_prompt_file(file)
        return _load_local(path, lambda: load_dataset(str(path), split=split))
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(
            f"`prompts_dataset`: no such file or folder {source!r}. Give a local path that exists or a hub dataset "
            "name such as 'org/name'."
        )
    return load_dataset(source, name=config_name, split=split)


# What a prompt file of each format must hold, for the messages.
PROMPT_FIELD = "each with the prompt in a 'prompt' field (or the one `prompt_column` names)"
PROMPT_FILE_SHAPES = {
    "json": f"one JSON object per line, {PROMPT_FIELD}",
    "csv": "a header row naming a 'prompt' column (or the column `prompt_column` names), then one prompt per row",
    "text": "one prompt per line",
    "parquet": "a table with a 'prompt' column (or the column `prompt_column` names)",
}


def check_prompt_file(path: Path) -> None:
    """A local prompt file must be UTF-8 (parquet aside), not empty, and JSON files must parse: else the error names
    the file, the line, and what the file needs."""
    builder = LOCAL_FORMATS[path.suffix.lower()]
    shape = PROMPT_FILE_SHAPES[builder]
    empty = ValueError(f"`prompts_dataset`: {path} is empty. It needs {shape}.")
    if builder == "parquet":
        if path.stat().st_size == 0:
            raise empty
        return
    text = read_text(path, "`prompts_dataset`")
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines or (builder == "csv" and len(lines) == 1):
        raise empty
    if builder == "json":
        try:  # a .json file may be one document (a list of objects); a .jsonl file, and any other, is JSON Lines
            document = json.loads(text) if path.suffix.lower() == ".json" else None
        except json.JSONDecodeError:
            document = None
        if document is None:
            for _ in json_lines(path, "`prompts_dataset`", PROMPT_FIELD):
                pass
            return
        rows = document if isinstance(document, list) else [document]
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(
                    f"`prompts_dataset`: item {i} of {path} is a JSON {json_kind(row)}, not an object. It needs a list "
                    f"of JSON objects (or one per line), {PROMPT_FIELD}."
                )
        if not rows:
            raise empty


def _load_local(path: Path, load) -> Dataset:
    """`load()` (a `datasets` loader of `path`), with its parse errors and an empty result named by file."""
    try:
        dataset = load()
    except DatasetGenerationError as err:
        raise ValueError(f"`prompts_dataset`: cannot read {path}: {str(err.__cause__ or err).strip()}") from err
    if len(dataset) == 0:
        raise ValueError(f"`prompts_dataset`: {path} holds no rows. It needs prompts to answer.")
    return dataset


def check_prompt_column(dataset: Dataset, column: str, num_rounds: int) -> None:
    """The prompt column must exist, hold non-empty strings, and be large enough for the rounds."""
    if len(dataset) == 0:
        raise ValueError(
            "The prompt dataset (`train_dataset`, `--prompts_dataset`) is empty: SOFT needs prompts for the model to "
            "answer."
        )
    if column not in dataset.column_names:
        raise ValueError(
            f"`prompt_column`: the prompt dataset has no column {column!r} (columns: {dataset.column_names}). "
            f"Rename the column or pass `--prompt_column <name>`."
        )
    if len(dataset) < num_rounds:
        raise ValueError(
            f"The prompt dataset has {len(dataset)} prompts, fewer than `num_rounds`={num_rounds}: every round needs "
            "at least one prompt. Add prompts or lower `num_rounds`."
        )
    for i, value in enumerate(dataset[column]):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"`prompt_column`: row {i} of column {column!r} is not a non-empty string ({value!r}). Every prompt "
                "must be text: fix or remove that row."
            )


def split_rounds(
    num_prompts: int, num_rounds: int, prompts_per_round: int | None, schedule: str, seed: int
) -> list[list[int]]:
    """Prompt indices for each round: seeded shuffle, then fresh disjoint chunks or the same chunk every round."""
    order = list(range(num_prompts))
    random.Random(f"soft-rounds-{seed}").shuffle(order)
    if schedule == "reuse":
        size = prompts_per_round or num_prompts
        if size > num_prompts:
            raise ValueError(
                f"`prompts_per_round`={size} is more than the {num_prompts} prompts available. Lower it or add prompts."
            )
        return [order[:size] for _ in range(num_rounds)]
    if schedule != "disjoint":
        raise ValueError(f"`prompt_schedule` must be 'disjoint' or 'reuse'; got {schedule!r}.")
    size = prompts_per_round or num_prompts // num_rounds
    if size * num_rounds > num_prompts:
        raise ValueError(
            f"`prompts_per_round`={size} x `num_rounds`={num_rounds} needs {size * num_rounds} distinct prompts but "
            f"the dataset has {num_prompts}. Lower either, add prompts, or use `prompt_schedule='reuse'`."
        )
    return [order[t * size : (t + 1) * size] for t in range(num_rounds)]


@dataclass(frozen=True)
class ValidationPair:
    prompt: str
    reference: str


def load_validation_set(path: str | None) -> list[ValidationPair]:
    """Prompt/reference pairs scored after every round; `none` disables validation."""
    if path is not None and str(path).lower() == "none":
        return []
    file = Path(path) if path is not None else asset_path("validation.jsonl")
    if not file.is_file():
        raise FileNotFoundError(f"`validation_path`: no such file {str(file)!r}. Give a JSONL file or 'none'.")
    pairs = []
    shape = "{'prompt': ..., 'reference': ...}"
    for where, row in json_lines(file, "`validation_path`", shape):
        prompt, reference = row.get("prompt"), row.get("reference")
        if not (isinstance(prompt, str) and prompt.strip() and isinstance(reference, str) and reference.strip()):
            raise ValueError(f"`validation_path`: {where} needs non-empty string fields 'prompt' and 'reference'.")
        pairs.append(ValidationPair(prompt.strip(), reference.strip()))
    if not pairs:
        raise ValueError(f"`validation_path`: {file} holds no pairs. Add some or pass 'none' to skip validation.")
    return pairs
