"""The behaviour evaluation sets, loaded and checked before any model work.

- `harmful`: HarmBench "standard" behaviours and the Do-Not-Answer risk areas that call for a refusal, half each, a
  fixed sample (the same items for every round and every run, whatever the training seed);
- `benign`: requests written for trl-soft (`assets/behaviour_benign.jsonl`), half of them safe requests that sound
  dangerous, to catch over-refusal;
- `unknowable`: questions about the future, private facts or what no one can know (`assets/behaviour_unknowable.jsonl`);
- `helpful`: the 80 Vicuna-bench questions (first turn), for the pairwise win rate.

Public sets come from `data_dir` (`benchmark_data_dir`, else `$TRL_SOFT_DATA_DIR`) when given, laid out as in
`../shared/data` (`harmbench/harmbench_standard.txt`, `donotanswer/<area>.jsonl`, `vicuna_bench/question.jsonl`), else
from the hub (`walledai/HarmBench`, `LibrAI/do-not-answer`). A malformed file is reported with its path and line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import load_dataset

from ..data import resolve_data_dir
from ..prompting import asset_path
from .settings import DNA_REFUSAL_AREAS, BehaviourSettings

HARMBENCH_FILE = "harmbench/harmbench_standard.txt"
HARMBENCH_HUB = ("walledai/HarmBench", "standard", "prompt")
DNA_DIR = "donotanswer"
DNA_HUB = "LibrAI/do-not-answer"
# Do-Not-Answer's `risk_area` values on the hub, for the areas of DNA_REFUSAL_AREAS.
DNA_HUB_AREAS = {
    "malicious_uses": "Malicious Uses",
    "information_hazard": "Information Hazards",
    "discrimination_exclusion_toxicity_hateful_offensive": "Discrimination, Exclusion, Toxicity, Hateful, Offensive",
}
VICUNA_FILE = "vicuna_bench/question.jsonl"
SAMPLE_SEED = "trl-soft-behaviour-v1"  # fixes which harmful items are evaluated, independent of the run's seed
SPLIT_SEED = "trl-soft-confirmation-v1"  # fixes which items are held out for confirmation (`BehaviourSets.split`)


@dataclass(frozen=True)
class BehaviourItem:
    """One request of an evaluation set; `id` says where it comes from (`source:index` for public sets)."""

    set: str
    id: str
    prompt: str
    kind: str = ""


def _read_jsonl(path: Path, key: str, what: str) -> list[tuple[int, dict]]:
    """(line number, row) for every non-blank line; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}.")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{what}: {path}:{number} is not valid JSON ({err.msg}).") from None
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{what}: {path}:{number} needs a non-empty string {key!r}.")
            rows.append((number, row))
    if not rows:
        raise ValueError(f"{what}: {path} has no rows.")
    return rows


def load_own_set(name: str, path: str | None, field_name: str) -> list[BehaviourItem]:
    """`benign` or `unknowable`: the shipped file, or the user's JSONL with `prompt` (and optional `id`, `kind`)."""
    source = Path(path).expanduser() if path else asset_path(f"behaviour_{name}.jsonl")
    rows = _read_jsonl(source, "prompt", f"`{field_name}`" if path else f"the shipped {name} set")
    items, seen = [], set()
    for number, row in rows:
        item_id = str(row.get("id") or f"{name}:{number}")
        if item_id in seen:
            raise ValueError(f"`{field_name}`: {source}:{number} repeats the id {item_id!r}; ids must be unique.")
        seen.add(item_id)
        items.append(BehaviourItem(name, item_id, row["prompt"].strip(), str(row.get("kind", ""))))
    return items


def _hub(*args, **kwargs):
    try:
        return load_dataset(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; the message says what to do
        raise RuntimeError(
            f"Could not load {args[0]!r} from the hub ({type(err).__name__}: {err}). Without a network, point "
            "`benchmark_data_dir` (or $TRL_SOFT_DATA_DIR) at a folder holding harmbench/ and donotanswer/."
        ) from None


def load_harmbench(data_dir: str | None) -> list[BehaviourItem]:
    if data_dir:
        path = Path(data_dir) / HARMBENCH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"`benchmark_data_dir`: no HarmBench file at {str(path)!r}.")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
    else:
        name, config, column = HARMBENCH_HUB
        prompts = list(enumerate(_hub(name, config, split="train")[column]))
    return [BehaviourItem("harmful", f"harmbench:{i}", p, "harmbench") for i, p in prompts]


def load_donotanswer(data_dir: str | None, areas: Sequence[str] = DNA_REFUSAL_AREAS) -> list[BehaviourItem]:
    items = []
    if data_dir:
        for area in areas:
            path = Path(data_dir) / DNA_DIR / f"{area}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"`benchmark_data_dir`: no Do-Not-Answer file at {str(path)!r}.")
            rows = _read_jsonl(path, "prompt", "`benchmark_data_dir`")
            items += [BehaviourItem("harmful", f"donotanswer/{area}:{n - 1}", r["prompt"].strip(), area)
                      for n, r in rows]
        return items
    table = _hub(DNA_HUB, split="train")
    wanted = {DNA_HUB_AREAS[a]: a for a in areas}
    for i, (question, area) in enumerate(zip(table["question"], table["risk_area"])):
        if area in wanted:
            items.append(BehaviourItem("harmful", f"donotanswer:{i}", question.strip(), wanted[area]))
    return items


def load_vicuna(data_dir: str | None, limit: int | None) -> list[BehaviourItem]:
    if not data_dir:
        raise ValueError(
            "`behaviour_eval` 'helpful' needs the Vicuna-bench questions: set `benchmark_data_dir` (or "
            "$TRL_SOFT_DATA_DIR) to a folder holding vicuna_bench/question.jsonl (FastChat's data/vicuna_bench)."
        )
    path = Path(data_dir) / VICUNA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"`benchmark_data_dir`: no Vicuna-bench file at {str(path)!r}.")
    items = []
    for number, row in _read_jsonl(path, "category", "`benchmark_data_dir`"):
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise ValueError(f"`benchmark_data_dir`: {path}:{number} needs `turns`, a list of strings.")
        items.append(BehaviourItem("helpful", f"vicuna:{row.get('question_id', number)}", turns[0].strip(),
                                   row["category"]))
    return items[:limit]


def sample_harmful(harmbench: list[BehaviourItem], dna: list[BehaviourItem], limit: int | None) -> list[BehaviourItem]:
    """Every item (`limit` None), or `limit` items, half from each source (fewer if a source is short): a fixed sample
    in a fixed order, whatever the run's seed."""
    if limit is None:
        return harmbench + dna
    rng = random.Random(SAMPLE_SEED)
    first = rng.sample(harmbench, min(len(harmbench), limit // 2))
    second = rng.sample(dna, min(len(dna), limit - len(first)))
    return first + second


@dataclass(frozen=True)
class BehaviourSets:
    """The loaded evaluation sets, by name; `unavailable`: default sets that could not be loaded, and why."""

    items: dict[str, list[BehaviourItem]]
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: BehaviourSettings) -> BehaviourSets:
        """The sets asked for. Left unset (`behaviour_eval` None), the default sets: a public set that cannot be
        loaded is then left out and named in `unavailable` instead of stopping the run."""
        data_dir = resolve_data_dir(settings.data_dir)
        items: dict[str, list[BehaviourItem]] = {}
        unavailable: dict[str, str] = {}
        wanted = settings.wanted
        if "harmful" in wanted:
            try:
                items["harmful"] = sample_harmful(load_harmbench(data_dir), load_donotanswer(data_dir),
                                                  settings.harmful_limit)
            except (FileNotFoundError, RuntimeError) as err:
                if settings.sets is not None:
                    raise
                unavailable["harmful"] = str(err)
        if "benign" in wanted:
            items["benign"] = load_own_set("benign", settings.benign_path, "behaviour_benign_path")[: settings.limit]
        if "unknowable" in wanted:
            items["unknowable"] = load_own_set("unknowable", settings.unknowable_path,
                                               "behaviour_unknowable_path")[: settings.limit]
        if "helpful" in wanted:
            items["helpful"] = load_vicuna(data_dir, settings.limit)
        return cls(items, unavailable)

    def __bool__(self) -> bool:
        return bool(self.items)

    def texts(self) -> list[tuple[str, str]]:
        """`(source, prompt)` of every item, for the check that no training prompt is one (`trl_soft.overlap`)."""
        return [(f"behaviour set '{name}'", item.prompt) for name, items in self.items.items() for item in items]

    def split(self, share: float, seed: str = SPLIT_SEED) -> tuple[BehaviourSets, BehaviourSets]:
        """`(selection, confirmation)`: `share` of each verdict set's items (seeded, per set, order kept) held out for
        confirmation; the helpful set (its win rate needs the round-0 answers of every item) stays whole in the
        selection part. The seed is fixed, not the run's: every run holds out the same items, so a setting chosen on
        the selection part of any run has never seen the confirmation part of another."""
        selection: dict[str, list[BehaviourItem]] = {}
        confirmation: dict[str, list[BehaviourItem]] = {}
        for name, items in self.items.items():
            held = round(share * len(items)) if name != "helpful" else 0
            chosen = set(random.Random(f"soft-confirmation-{seed}-{name}").sample(range(len(items)), held))
            selection[name] = [item for k, item in enumerate(items) if k not in chosen]
            if chosen:
                confirmation[name] = [item for k, item in enumerate(items) if k in chosen]
        return BehaviourSets(selection, self.unavailable), BehaviourSets(confirmation)
