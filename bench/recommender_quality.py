#!/usr/bin/env python3
"""Recommender quality at scale: ALS against popularity on held-out splits of synthetic data.

For each split method (``random``: 20 % of every user's pairs held out; ``time``: the last 20 %
of events by time, pairs the user did not have before) it trains ALS on the training part and
ranks for up to ``--max-users`` test users with both ALS and the time-decayed popularity
baseline, each excluding what the user already has, and prints precision@k, recall@k, nDCG@k
and coverage. Target (issue): ALS precision@10 >= 1.5x popularity's.

    .venv/bin/python bench/recommender_quality.py                       # 200k x 40k x 4M
    .venv/bin/python bench/recommender_quality.py --users 1000000 --items 200000 \\
        --events 20000000                                               # the training size

The test suite checks the same claim at 5k x 2k x 100k (tests/test_recommender_synthetic.py);
this harness shows it holds at a size where popularity is harder to beat by luck.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommender import (
    ALSConfig,
    InteractionConfig,
    SyntheticConfig,
    evaluate_columns,
    generate,
)

TARGET_LIFT = 1.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--communities", type=int, default=100)
    parser.add_argument("--factors", type=int, default=ALSConfig.factors)
    parser.add_argument("--iterations", type=int, default=ALSConfig.iterations)
    parser.add_argument("--regularization", type=float, default=ALSConfig.regularization)
    parser.add_argument("--alpha", type=float, default=ALSConfig.alpha)
    parser.add_argument("--half-life-days", type=float, default=30.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=10_000)
    parser.add_argument("--methods", default="random,time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    als = ALSConfig(
        factors=args.factors,
        regularization=args.regularization,
        alpha=args.alpha,
        iterations=args.iterations,
        seed=args.seed,
    )
    interactions = InteractionConfig(half_life_seconds=args.half_life_days * 86_400)
    print(
        f"recommender quality: {args.users:,} users x {args.items:,} assets x {args.events:,} "
        f"events, {args.communities} communities; ALS {als.to_dict()}; "
        f"half-life {args.half_life_days} days; k={args.k}, up to {args.max_users:,} test users",
        flush=True,
    )
    started = time.perf_counter()
    data = generate(
        SyntheticConfig(
            n_users=args.users,
            n_items=args.items,
            n_events=args.events,
            communities=args.communities,
            seed=args.seed,
        )
    )
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)

    results = []
    all_met = True
    for method in args.methods.split(","):
        started = time.perf_counter()
        evaluation = evaluate_columns(
            data.columns,
            interactions,
            als,
            method=method,
            k=args.k,
            max_users=args.max_users,
            seed=args.seed,
        )
        seconds = time.perf_counter() - started
        table = evaluation.table()
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        lift = evaluation.lift("precision")
        met = lift >= TARGET_LIFT
        fit_s = evaluation.model.meta.training_seconds
        all_met &= met
        print(
            f"{method}: ALS/popularity precision@{args.k} = {lift:.2f}x "
            f"({'meets' if met else 'MISSES'} the {TARGET_LIFT}x target); "
            f"split+train+rank {seconds:.1f} s, ALS fit {fit_s:.1f} s",
            flush=True,
        )
        results.append(
            {
                "method": method,
                "lift_precision": lift,
                "seconds": seconds,
                "rows": [row.__dict__ for row in evaluation.rows],
            }
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
        )
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
