"""Regenerate the field table in docs/configuration.md from SOFTConfig's own help texts.

    python docs/make_config_reference.py          # rewrite the table
    python docs/make_config_reference.py --check  # exit 1 if the doc is out of date (the test suite runs this)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from trl import SFTConfig

from trl_soft import SOFTConfig
from trl_soft.config import CONCERNS

DOC = Path(__file__).with_name("configuration.md")
BEGIN, END = "<!-- BEGIN SOFTConfig fields -->", "<!-- END SOFTConfig fields -->"


def field_table() -> str:
    inherited = {f.name for f in dataclasses.fields(SFTConfig)}
    owner: dict[str, str] = {}
    for concern, settings in CONCERNS.items():
        for name in settings.CONFIG_FIELDS.values():
            owner.setdefault(name, f"{concern} (`{settings.__name__}`)")
    rows = ["| field | default | concern | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(SOFTConfig):
        if f.name in inherited:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default!r}` | {owner.get(f.name, '')} | {text} |")
    return "\n".join(rows)


def render(doc: str) -> str:
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{field_table()}\n{END}{tail}"


if __name__ == "__main__":
    current = DOC.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == current else 1)
    DOC.write_text(fresh, encoding="utf-8")
