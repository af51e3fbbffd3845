"""How often the acceptance rule accepts a round that changed nothing, and rejects one that lost the margin.

    python benchmarks/bench_acceptance.py                       # the default sets and margin
    python benchmarks/bench_acceptance.py --margins 0.02 0.03 0.04 --flip_rates 0.04 0.08 0.12 --sims 4000

The rule (`trl_soft/acceptance.py`) is applied, unchanged, to simulated verdicts. A round's greedy answers differ
from the starting model's on some items even when nothing changed on average: each item *flips* with probability
`flip_rate`, half of the flips toward alignment and half away. A round that **changed nothing** has exactly that. A
round that **lost the margin** has, on top of the same noise, a net share `margin` of the items moved away from
alignment (its true pooled difference is -margin). Both are drawn over the default evaluation's sets (every harmful
request of HarmBench + Do-Not-Answer's refusal areas, the benign and the unknowable sets: 867 + 110 + 162 items), or
`--sizes`. The table gives P(accept | changed nothing), P(reject | lost the margin) and the median MDE the round
reports, per margin and flip rate. The flip rate of a real round is measured by every run (`vs_start_gained +
vs_start_lost` over `vs_start_n` in its metrics); docs/behaviour.md gives the demo's.
"""

from __future__ import annotations

import argparse
import random
import statistics

from trl_soft.acceptance import DEFAULT_MARGIN, AcceptanceSettings, decide

DEFAULT_SIZES = {"refusal_harmful": 867, "refusal_benign": 110, "admits_unknown": 162}
ALIGNED_START = {"refusal_harmful": 0.14, "refusal_benign": 0.99, "admits_unknown": 0.20}  # the embedded model's


def simulate(rng: random.Random, sizes: dict[str, int], flip_rate: float, loss: float):
    """(start scores, round scores) by metric, in each metric's own direction (refusal_benign: 1 = refused)."""
    start, after = {}, {}
    for metric, n in sizes.items():
        before_aligned, after_aligned = [], []
        for _ in range(n):
            u = rng.random()
            if u < flip_rate / 2 + loss:
                b, a = 1, 0  # lost
            elif u < flip_rate + loss:
                b, a = 0, 1  # gained
            else:
                b = a = int(rng.random() < ALIGNED_START[metric])
            before_aligned.append(b)
            after_aligned.append(a)
        flip = metric == "refusal_benign"  # refusing a benign request is the unaligned answer
        start[metric] = [1 - x if flip else x for x in before_aligned]
        after[metric] = [1 - x if flip else x for x in after_aligned]
    return start, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.02, DEFAULT_MARGIN, 0.04])
    parser.add_argument("--flip_rates", type=float, nargs="+", default=[0.04, 0.08, 0.12])
    parser.add_argument("--sizes", type=int, nargs=3, metavar=("HARMFUL", "BENIGN", "UNKNOWABLE"),
                        default=list(DEFAULT_SIZES.values()))
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = dict(zip(DEFAULT_SIZES, args.sizes))
    print(f"items: {sizes} ({sum(sizes.values())} pooled); {args.sims} simulated rounds per cell\n")
    print("| margin | flip rate | P(accept \\| changed nothing) | P(reject \\| lost the margin) | median MDE (points) |")
    print("|---:|---:|---:|---:|---:|")
    for margin in args.margins:
        settings = AcceptanceSettings(margin=margin)
        for flip_rate in args.flip_rates:
            rng = random.Random(args.seed)
            accepted, rejected, mdes = 0, 0, []
            for _ in range(args.sims):
                same = decide(1, *simulate(rng, sizes, flip_rate, 0.0), settings)
                accepted += same.accepted
                mdes.append(same.comparison.pooled.mde)
                worse = decide(1, *simulate(rng, sizes, flip_rate, margin), settings)
                rejected += not worse.accepted
            print(f"| {margin:.2f} | {flip_rate:.3f} | {accepted / args.sims:.3f} | {rejected / args.sims:.3f} | "
                  f"{100 * statistics.median(mdes):.2f} |")


if __name__ == "__main__":
    main()
