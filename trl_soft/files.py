"""Reading the user's text files: UTF-8 text, one JSON document, and JSON Lines of objects, refused with the file and line at fault.

Every loader of a user file (prompts, validation set, exemplars, principles, benchmark copies) reads it through here,
so a file saved in another encoding, a line that is not JSON, or a line that is not an object is reported the same
way: "<who>: <file>:<line> <what is wrong>. <what to do>." `who` names the setting the file came from (`validation_path`)
or the data set (TruthfulQA). A UTF-8 byte-order mark is accepted.

This module imports nothing of the package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_text(path: str | Path, who: str) -> str:
    """The file's text; a file that is not UTF-8 is refused naming `who`, the file and the line of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{who}: {path}:{line} is not UTF-8 text (byte {data[err.start]:#04x}). Save the file as UTF-8."
        ) from None


def json_lines(path: str | Path, who: str, shape: str) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) for every non-blank line of a JSON Lines file. A line that is not JSON, or not a JSON
    object, is refused naming `who` and `file:line`; `shape` says what each line should hold (for the message)."""
    for line_no, line in enumerate(read_text(path, who).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{who}: {where} is not valid JSON ({err.msg}, column {err.colno}). The file must be JSON Lines: one "
                f"JSON object per line, {shape}."
            ) from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{who}: {where} is a JSON {json_kind(obj)}, not an object. The file must be JSON Lines: one JSON "
                f"object per line, {shape}."
            )
        yield where, obj


def json_document(path: str | Path, who: str, shape: str) -> object:
    """The one JSON document in a file (UTF-8); invalid JSON is refused naming `who` and `file:line`, and `shape`
    says what the file should hold (for the message)."""
    try:
        return json.loads(read_text(path, who))
    except json.JSONDecodeError as err:
        raise ValueError(f"{who}: {path}:{err.lineno} is not valid JSON ({err.msg}). It must be {shape}.") from None


def json_kind(value: object) -> str:
    """JSON's name for the type of a parsed value (for messages)."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
