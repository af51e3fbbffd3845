"""How much of a run's final model to return: `final_interpolation` t, tuned on one part and reported on another.

    # tune: the selection behaviour items and TruthfulQA half A, for every t
    python benchmarks/bench_interpolation.py benchmarks/results/levers_v4/seed_4{2,3,4}/defaults --scales 1 0.5 0.25 \\
        --part tune
    # report: the held-out behaviour items and TruthfulQA half B, for the t chosen on the tuning part only
    python benchmarks/bench_interpolation.py benchmarks/results/levers_v4/seed_4{2,3,4}/defaults --scales 0.5 \\
        --part report

For each finished run (a `trl-soft demo` folder: its `round_0/model` and `final_model`) and each t, the final model's
change from the start is scaled by t exactly as a run does it (`trl_soft.interpolation.interpolate_folder` on a copy),
merged into full weights, and scored:

- behaviour: `trl-soft eval --behaviour harmful,benign,unknowable` greedy on the run's **selection** items (tune) or
  its **held-out** items (report), the same split as the run (`behaviour_confirmation_share` 0.7), paired item by item
  with the starting model's answers (exact one-sided p, mean change with its 95% interval);
- TruthfulQA MC1/MC2 (lm-eval's prompt, float32) on **half A** (tune) or **half B** (report) of the 817 questions,
  split by a fixed seed: MC2 paired with the starting model (mean difference, 95% interval, one-sided p worse).

Choose t on the tuning part; read the report part only for the t chosen. `--scales 1 --truthfulqa_only` scores a
run's final model as it returns it (already interpolated by the run) on TruthfulQA alone: its behaviour on the
held-out items is the run's own verdict. Each model takes about 1-1.5 minutes of
behaviour and 3-4 minutes of TruthfulQA on a 2-core CPU; the starting model's scores are cached in `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts
from bench_levers import paired_truthfulqa, truthfulqa_items  # noqa: E402

TQA_SPLIT_SEED = 0
BEHAVIOUR = "harmful,benign,unknowable"


def tqa_half(n: int, half: str) -> list[int]:
    """Question indices of TruthfulQA half 'A' (tuning) or 'B' (reporting): a seeded permutation cut in two."""
    order = list(range(n))
    random.Random(TQA_SPLIT_SEED).shuffle(order)
    return sorted(order[: n // 2] if half == "A" else order[n // 2:])


def scaled_model(run: Path, t: float, into: Path) -> Path:
    """The run's final model with its change from the start scaled by t, merged into full weights in `into`."""
    import torch
    from transformers import AutoTokenizer

    from trl_soft.interpolation import interpolate_folder
    from trl_soft.models import load_inference_model, record_embedded_base

    if (into / "config.json").is_file():
        return into
    adapter = into.with_name(into.name + ".adapter")
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.copytree(run / "final_model", adapter)
    if t < 1:
        interpolate_folder(run / "round_0" / "model", adapter, t)
    if json.loads((run / "soft_state.json").read_text()).get("fingerprint", {}).get("model") in (None, "embedded"):
        record_embedded_base(adapter)  # trained on the embedded copy (runs before that file was written)
    load_inference_model(str(adapter), merge_adapter=True, dtype=torch.float32).save_pretrained(into)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(into)
    shutil.rmtree(adapter)
    return into


def behaviour_scores(model: str, part: str, out: Path) -> dict:
    """Per-item behaviour scores of `model` on the run's selection or held-out part (cached in `out`)."""
    if not out.is_file():
        command = [sys.executable, "-m", "trl_soft.cli", "eval", "--behaviour", BEHAVIOUR, "--part", part,
                   "--model", model, "--behaviour_confirmation_share", "0.7", "--behaviour_fewshot", "none",
                   "--output_json", str(out)]
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(out.read_text())["item_scores"]


def truthfulqa_half(model: str, half: str, data_dir: str, out: Path) -> tuple[list[bool], list[float]]:
    """Per question of the half, MC1 correct and MC2 score of `model` (cached in `out`)."""
    from trl_soft.evaluation import truthfulqa

    n = len(truthfulqa.load_truthfulqa(data_dir))
    return truthfulqa_items(model, data_dir, out, questions=tqa_half(n, half))


def row(seed: str, t: float, start_behaviour: dict | None, behaviour: dict | None, start_tqa, tqa) -> str:
    from trl_soft.behaviour.compare import compare

    truth = paired_truthfulqa(start_tqa, tqa)
    verdict = "- (not scored: `--truthfulqa_only`)"
    if behaviour is not None:
        pooled = compare(start_behaviour, behaviour).pooled.as_dict()
        p = pooled["p_better"] if pooled["gained"] > pooled["lost"] else pooled["p_worse"]
        verdict = (f"+{pooled['gained']}/-{pooled['lost']} of {pooled['n']}, p={p:.2g}, {100 * pooled['diff']:+.1f} "
                   f"[{100 * pooled['low']:+.1f}, {100 * pooled['high']:+.1f}]")
    return (f"| {seed} | {t:g} | {verdict} | "
            f"{100 * truth['mc1_start']:.1f} -> {100 * truth['mc1_final']:.1f} (+{truth['mc1_gained']}/"
            f"-{truth['mc1_lost']}) | {100 * truth['mc2_diff']:+.2f} [{100 * truth['mc2_low']:+.2f}, "
            f"{100 * truth['mc2_high']:+.2f}], p worse={truth['mc2_p_worse']:.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished `trl-soft demo` folders")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--part", choices=("tune", "report"), default="tune")
    parser.add_argument("--data_dir", default=os.environ.get("TRL_SOFT_DATA_DIR", "../shared/data"))
    parser.add_argument("--work", default="benchmarks/results/interpolation", help="models and cached scores")
    parser.add_argument("--truthfulqa_only", action="store_true",
                        help="score TruthfulQA only (e.g. at t = 1, where the run's own held-out verdict is the "
                             "behaviour figure)")
    args = parser.parse_args()
    os.environ.setdefault("TRL_SOFT_DATA_DIR", args.data_dir)
    behaviour_part, half = ("selection", "A") if args.part == "tune" else ("confirmation", "B")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start_behaviour = None if args.truthfulqa_only else behaviour_scores(
        "embedded", behaviour_part, work / f"start_{behaviour_part}.json")
    start_tqa = truthfulqa_half("embedded", half, args.data_dir, work / f"start_tqa_{half}.json")
    lines = [f"| run | t | behaviour, {behaviour_part} items (+gained/-lost, p, change [95% CI], points) | "
             f"TruthfulQA MC1, half {half} | MC2 change, half {half} [95% CI] |", "|---|---:|---|---|---|"]
    for run in map(Path, args.runs):
        name = run.parent.name if run.name == "defaults" else run.name
        for t in args.scales:
            model = scaled_model(run, t, work / name / f"t{t:g}")
            behaviour = None if args.truthfulqa_only else behaviour_scores(
                str(model), behaviour_part, model / f"{behaviour_part}.json")
            tqa = truthfulqa_half(str(model), half, args.data_dir, model / f"tqa_{half}.json")
            lines.append(row(name, t, start_behaviour, behaviour, start_tqa, tqa))
            print(lines[-1], flush=True)
    report = "\n".join(lines)
    (work / f"results_{args.part}.md").write_text(report + "\n")
    print("\n" + report)


if __name__ == "__main__":
    main()
