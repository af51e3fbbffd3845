"""Which aligned-data levers make `make demo` return a better model, judged on behaviour items no decision has seen.

    python benchmarks/bench_levers.py --seeds 42 --arms none retries mix length accumulate similar all
    python benchmarks/bench_levers.py --seeds 42 43 44 --arms defaults --truthfulqa     # the demo as it ships

Every arm is `trl-soft demo` (the embedded SmolLM2-135M-Instruct, LoRA, 3 rounds of 32 prompts, the acceptance rule;
`trl_soft/assets/demo.yaml`) run in its own process with the overrides below; `none` turns every lever off (the
data as in the demo before issue 26; its collapse margin, hold-out, replay share and epochs stay as the demo
ships them), an arm named after a lever turns that lever alone on,
`all` turns every lever on, `defaults` runs the demo exactly as it ships (its defaults chosen from the selection-part
figures of the other arms):

- `retries`: adaptive best-of-n for the prompts that call for a refusal or an admission (`aligned_retry_budget` 16);
- `mix`: half of every round's prompts call for a refusal, an admission or a correction (`aligned_prompt_share`);
- `length`: truncated answers cut at their last complete sentence and trained as the start of an answer, instead of
  dropped (`filter_truncation`);
- `accumulate`: each round also trains on the earlier accepted rounds' kept answers (`round_data`);
- `similar`: exemplars chosen per prompt by maximal marginal relevance (`exemplar_sampling`).

Per run it reads the manifest and the rounds' metrics (nothing is recomputed): each round's decision, how many of its
prompts called for a refusal or an admission and how many kept an aligned answer, the retry samples, the kept-answer
mean length, the looping greedy answers on the selection items (round 0 first), the share of round time spent on the
behaviour evaluation; the **selection** verdict (the final round
against the start on the items that decided acceptance and chose the round: optimistic by construction) and the
**confirmation** verdict (the same comparison on the held-out items, `behaviour_confirmation_share`, which no decision
saw). With `--truthfulqa`, TruthfulQA MC1 and MC2 of the starting model and of each final model, paired item by item
(MC1: exact sign test on the questions that changed; MC2: paired mean difference with its 95% interval, also apart on
the questions whose true answers are shorter than their false ones and on the rest: MC2 sums log-likelihoods, so a
model that moves probability toward longer continuations loses it on the first).

Defaults are chosen on the selection columns only; the confirmation columns are what is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

LEVERS = {
    "retries": ["--aligned_retry_budget", "16"],
    "mix": ["--aligned_prompt_share", "0.5"],
    "length": ["--filter_truncation", "prefix"],
    "accumulate": ["--round_data", "accumulate"],
    "similar": ["--exemplar_sampling", "similar"],
}
OFF = {
    "retries": ["--aligned_retry_budget", "0"],
    "mix": ["--aligned_prompt_share", "0"],
    "length": ["--filter_truncation", "drop"],
    "accumulate": ["--round_data", "new"],
    "similar": ["--exemplar_sampling", "random"],
}
ARMS = ("none", *LEVERS, "all", "defaults")
ALPHA = 0.05


def arm_flags(arm: str) -> list[str]:
    if arm == "defaults":
        return []
    flags: list[str] = []
    for lever in LEVERS:
        on = arm == "all" or arm == lever
        flags += LEVERS[lever] if on else OFF[lever]
    return flags


def run_demo(arm: str, seed: int, folder: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "trl_soft.cli", "demo", "--seed", str(seed), "--output_dir", str(folder),
               "--overwrite_output_dir", *arm_flags(arm), *extra]
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        print(f"[{arm}, seed {seed}] exited with {code}; see {folder.parent / (folder.name + '.log')}", flush=True)
    return time.perf_counter() - started


def _verdict(change: dict | None) -> str:
    if not change:
        return "-"
    p = change["p_worse"] if change["lost"] >= change["gained"] else change["p_better"]
    outcome = "worse" if change["p_worse"] < ALPHA else "better" if change["p_better"] < ALPHA else "n.s."
    return (f"+{change['gained']}/-{change['lost']} of {change['n']}, p={p:.2g}, {100 * change['diff']:+.1f} "
            f"[{100 * change['low']:+.1f}, {100 * change['high']:+.1f}], MDE {100 * change['mde']:.1f}: {outcome}")


def selection(state: dict) -> dict | None:
    final = state.get("final_round") or 0
    row = next((r for r in state.get("history", []) if r.get("round") == final), None)
    if final == 0 or row is None or row.get("vs_start_n") is None:
        return None
    return {k: row[f"vs_start_{k}"] for k in ("n", "gained", "lost", "p_worse", "p_better", "diff", "low", "high",
                                               "mde")}


def read_run(folder: Path) -> dict:
    state = json.loads((folder / "soft_state.json").read_text())
    rounds = []
    for row in state.get("history", []):
        total = sum(v for k, v in row.items() if k.startswith("seconds_") and k != "seconds_behaviour"
                    and isinstance(v, (int, float)))
        rounds.append({
            "round": row["round"], "accepted": row.get("accepted"), "kept": row.get("kept"),
            "prompts": row.get("prompts"), "aligned_needed": row.get("aligned_needed"),
            "aligned_kept": row.get("aligned_kept"), "retry_samples": row.get("aligned_retry_samples"),
            "corrections_needed": row.get("corrections_needed"), "corrections_kept": row.get("corrections_kept"),
            "mean_tokens": row.get("mean_response_tokens"), "cut": row.get("cut"),
            "behaviour_share": (row.get("seconds_behaviour") or 0) / total if total else None,
        })
    for row in rounds:
        row["tokens_other"] = other_answer_tokens(folder / f"round_{row['round']}" / "generations.jsonl")
    loops = [looping_answers(folder / f"round_{t}" / "behaviour.jsonl") for t in range(len(rounds) + 1)]
    return {"state": state, "rounds": rounds, "final_round": state.get("final_round"), "loops": loops,
            "selection": selection(state), "confirmation": state.get("confirmation")}


def looping_answers(behaviour: Path) -> int | None:
    """How many of a round's zero-shot greedy behaviour answers (the selection items) are loops
    (`behaviour_loops_fail`'s evidence): how far the rounds degenerate."""
    if not behaviour.is_file():
        return None
    return sum(row.get("style") == "zero_shot" and str(row.get("evidence", "")).startswith("loop:")
               for row in map(json.loads, behaviour.read_text().splitlines()))


def other_answer_tokens(generations: Path) -> float | None:
    """Mean tokens of a round's new kept answers to the prompts that call for no refusal or admission: the length
    drift without the mix's short refusals (how many of those a round keeps changes the all-answer mean)."""
    if not generations.is_file():
        return None
    tokens = [row["num_tokens"] for row in map(json.loads, generations.read_text().splitlines())
              if row.get("kept") and row.get("from_round") is None and not row.get("calls_for")]
    return sum(tokens) / len(tokens) if tokens else None


def truthfulqa_items(model: str, data_dir: str, cache: Path | None = None,
                     questions: list[int] | None = None) -> tuple[list[bool], list[float]]:
    """Per question (every one, or those at `questions`), MC1 correct and the MC2 score of `model` (a folder or
    'embedded'); kept in `cache` (JSON) and read back from it when it is there."""
    if cache is not None and cache.is_file():
        mc1, mc2 = json.loads(cache.read_text())
        return mc1, mc2
    import torch
    from transformers import AutoTokenizer

    from trl_soft.evaluation import truthfulqa
    from trl_soft.evaluation.multiple_choice import score_choices
    from trl_soft.models import ensure_pad_token, load_inference_model, resolve_model_path

    path = resolve_model_path(model) if model == "embedded" else model
    network = load_inference_model(path, merge_adapter=True, dtype=torch.float32)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    items = truthfulqa.load_truthfulqa(data_dir)
    items = items if questions is None else [items[i] for i in questions]
    requests, layout = truthfulqa.build_requests(items)
    scores = score_choices(network, tokenizer, requests, desc=f"TruthfulQA {Path(model).parent.name or model}")
    result = truthfulqa.aggregate(items, scores, layout)
    if cache is not None:
        cache.write_text(json.dumps([list(result.per_item_mc1), list(result.per_item_mc2)]))
    return list(result.per_item_mc1), list(result.per_item_mc2)


def paired_truthfulqa(start: tuple[list[bool], list[float]], final: tuple[list[bool], list[float]]) -> dict:
    from trl_soft.behaviour.compare import sign_test
    from trl_soft.behaviour.stats import paired_difference

    gained = sum(not a and b for a, b in zip(start[0], final[0]))
    lost = sum(a and not b for a, b in zip(start[0], final[0]))
    mc2 = paired_difference(start[1], final[1])
    return {"mc1_start": sum(start[0]) / len(start[0]), "mc1_final": sum(final[0]) / len(final[0]),
            "mc1_gained": gained, "mc1_lost": lost, "mc1_p_worse": sign_test(lost, gained),
            "mc2_start": sum(start[1]) / len(start[1]), "mc2_final": sum(final[1]) / len(final[1]),
            "mc2_diff": mc2.value, "mc2_low": mc2.low, "mc2_high": mc2.high,
            "mc2_p_worse": lower_tail_p(mc2.value, mc2.se)}


def truthfulqa_true_shorter(data_dir: str) -> list[bool]:
    """Per question: are its MC2 true answers shorter, on average in characters, than its false ones?"""
    from trl_soft.evaluation import truthfulqa

    def mean_length(item, label: int) -> float:
        lengths = [len(c) for c, given in zip(item.mc2_choices, item.mc2_labels) if given == label]
        return sum(lengths) / len(lengths)

    return [mean_length(item, 1) < mean_length(item, 0) for item in truthfulqa.load_truthfulqa(data_dir)]


def mc2_by_length(start: list[float], final: list[float], true_shorter: list[bool]) -> dict:
    """The MC2 change apart on the questions whose true answers are shorter than their false ones and on the rest:
    a model that moves probability toward longer continuations (MC2 sums log-likelihoods) loses MC2 on the first."""
    from trl_soft.behaviour.stats import paired_difference

    out = {}
    for name, wanted in (("shorter", True), ("longer", False)):
        pairs = [(a, b) for a, b, short in zip(start, final, true_shorter) if short == wanted]
        if len(pairs) > 1:
            d = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
            out[name] = {"n": len(pairs), "diff": d.value, "low": d.low, "high": d.high}
    return out


def lower_tail_p(difference: float, se: float) -> float:
    """One-sided p that the final model is worse (the paired mean difference below zero): P(Z <= difference / se) under
    no change; small when the difference is clearly negative. No spread at all: 1 unless the difference is negative."""
    if not se:
        return 0.0 if difference < 0 else 1.0
    return 0.5 * math.erfc(-(difference / se) / math.sqrt(2))


def table(results: list[dict]) -> str:
    lines = ["| seed | arm | decisions | final | aligned kept/needed per round | premise corrections kept/needed | "
             "retry samples | kept-answer "
             "tokens per round (all; other than refusals/admissions) | looping greedy answers, rounds 0-T (selection) | behaviour share of round time | selection verdict | confirmation verdict (held out) |",
             "|---:|---|---|---:|---|---|---|---|---|---|---|---|"]
    marks = {True: "acc", False: "REJ", None: "-"}
    for r in results:
        rounds = r["rounds"]
        decisions = " ".join(f"{x['round']}:{marks[x['accepted']]}" for x in rounds)
        aligned = " ".join(f"{x['aligned_kept']}/{x['aligned_needed']}" for x in rounds)
        corrections = " ".join("-" if x.get("corrections_needed") is None else
                               f"{x['corrections_kept']}/{x['corrections_needed']}" for x in rounds)
        retries = " ".join(str(x["retry_samples"]) for x in rounds)
        tokens = " ".join(f"{x['mean_tokens']:.0f}" for x in rounds if x["mean_tokens"] is not None)
        tokens += "; " + " ".join(f"{x['tokens_other']:.0f}" for x in rounds if x["tokens_other"] is not None)
        share = " ".join(f"{100 * x['behaviour_share']:.0f}%" for x in rounds if x["behaviour_share"] is not None)
        loops = " ".join("-" if n is None else str(n) for n in r.get("loops", []))
        lines.append(f"| {r['seed']} | {r['arm']} | {decisions} | {r['final_round']} | {aligned} | {corrections} | "
                     f"{retries} | "
                     f"{tokens} | {loops} | {share} | {_verdict(r['selection'])} | {_verdict(r['confirmation'])} |")
    return "\n".join(lines)


def tqa_table(results: list[dict]) -> str:
    lines = ["| seed | arm | final | MC1 start -> final (+g/-l, p worse) | MC2 start -> final (diff [95% CI], p worse) | "
             "MC2 change where the true answers are shorter / longer than the false ones |",
             "|---:|---|---:|---|---|---|"]
    for r in results:
        t = r.get("truthfulqa")
        if not t:
            continue
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['final_round']} | {100 * t['mc1_start']:.1f} -> {100 * t['mc1_final']:.1f}"
            f" (+{t['mc1_gained']}/-{t['mc1_lost']}, p={t['mc1_p_worse']:.2g}) | {100 * t['mc2_start']:.1f} -> "
            f"{100 * t['mc2_final']:.1f} ({100 * t['mc2_diff']:+.2f} [{100 * t['mc2_low']:+.2f}, "
            f"{100 * t['mc2_high']:+.2f}], p={t['mc2_p_worse']:.2g}) | {by_length(t.get('mc2_by_length') or {})} |"
        )
    return "\n".join(lines)


def by_length(split: dict) -> str:
    parts = [f"{100 * split[k]['diff']:+.2f} [{100 * split[k]['low']:+.2f}, {100 * split[k]['high']:+.2f}] "
             f"(n={split[k]['n']})" for k in ("shorter", "longer") if k in split]
    return " / ".join(parts) or "-"


def changed_answers(folder: Path, limit: int) -> list[str]:
    """The held-out items whose verdict changed between the starting and the final model, to read (a few per run)."""
    start_file, final_file = folder / "round_0" / "confirmation.jsonl", folder / "confirmation.jsonl"
    if not (start_file.is_file() and final_file.is_file()):
        return []
    start = {(r["metric"], r["id"]): r for r in map(json.loads, start_file.read_text().splitlines())}
    lines = []
    for row in map(json.loads, final_file.read_text().splitlines()):
        before = start.get((row["metric"], row["id"]))
        if before is None or before["score"] == row["score"]:
            continue
        lines.append(f"- {row['metric']} {before['score']:.0f} -> {row['score']:.0f}: {row['prompt'][:90]!r}\n"
                     f"  start: {before['answer'][:160]!r}\n  final: {row['answer'][:160]!r}")
        if len(lines) >= limit:
            break
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--truthfulqa", action="store_true", help="score TruthfulQA MC1/MC2 of start and final models")
    parser.add_argument("--data_dir", default=os.environ.get("TRL_SOFT_DATA_DIR", "../shared/data"))
    parser.add_argument("--output_dir", default="benchmarks/results/levers")
    parser.add_argument("--reuse", action="store_true", help="read runs already in output_dir instead of running them")
    parser.add_argument("--changed", type=int, default=4, help="held-out answers that changed, printed per run")
    parser.add_argument("extra", nargs="*", help="more `trl-soft demo` flags for every run (after --)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    results = []
    start_tqa, true_shorter = None, None
    for seed in args.seeds:
        for arm in args.arms:
            folder = out / f"seed_{seed}" / arm
            seconds = None
            if not (args.reuse and (folder / "soft_state.json").is_file()):
                seconds = run_demo(arm, seed, folder, args.extra)
            if not (folder / "soft_state.json").is_file():
                continue
            result = {"seed": seed, "arm": arm, "seconds": seconds, **read_run(folder)}
            if args.truthfulqa:
                start_tqa = start_tqa or truthfulqa_items("embedded", args.data_dir, out / "truthfulqa_start.json")
                final = result["final_round"] or 0
                final_tqa = start_tqa if final == 0 else truthfulqa_items(
                    str(folder / "final_model"), args.data_dir, folder / "truthfulqa_final.json")
                result["truthfulqa"] = paired_truthfulqa(start_tqa, final_tqa)
                true_shorter = true_shorter or truthfulqa_true_shorter(args.data_dir)
                result["truthfulqa"]["mc2_by_length"] = mc2_by_length(start_tqa[1], final_tqa[1], true_shorter)
            result["changed"] = changed_answers(folder, args.changed)
            results.append(result)
            print(f"[seed {seed}, {arm}] final round {result['final_round']}; selection "
                  f"{_verdict(result['selection'])}; confirmation {_verdict(result['confirmation'])}"
                  + (f"; {seconds / 60:.1f} min" if seconds else ""), flush=True)
    report = "## Aligned-data levers (`trl-soft demo`)\n\n" + table(results)
    if args.truthfulqa:
        report += "\n\n## TruthfulQA, paired against the starting model\n\n" + tqa_table(results)
    for r in results:
        if r["changed"]:
            report += f"\n\n### Held-out answers that changed (seed {r['seed']}, {r['arm']})\n\n" + "\n".join(r["changed"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "state"} for r in results], indent=2, default=str) + "\n")
    print("\n" + report)


if __name__ == "__main__":
    main()
