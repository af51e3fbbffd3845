"""Regenerate the field table in docs/configuration.md from the settings the concerns declare (`setting(...)` in each
settings class of `CONCERNS`; `SOFTConfig`'s own fields are generated from the same declarations).

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
from trl_soft.settings import config_settings

DOC = Path(__file__).with_name("configuration.md")
BEGIN, END = "<!-- BEGIN SOFTConfig fields -->", "<!-- END SOFTConfig fields -->"


def field_table() -> str:
    inherited = {f.name for f in dataclasses.fields(SFTConfig)}
    declared = {entry.name: (concern, settings, entry) for concern, settings in CONCERNS.items()
                for entry in config_settings(settings)}
    readers: dict[str, list[str]] = {}
    for concern, settings in CONCERNS.items():
        for name in settings.CONFIG_FIELDS.values():
            if name in declared and declared[name][0] != concern:
                readers.setdefault(name, []).append(concern)
    rows = ["| field | default | concern | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(SOFTConfig):
        if f.name in inherited:
            continue
        concern, settings, entry = declared[f.name]
        owner = f"{concern} (`{settings.__name__}`)" + "".join(f"; read by {r} too" for r in readers.get(f.name, ()))
        text = entry.help.replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{entry.value!r}` | {owner} | {text} |")
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
