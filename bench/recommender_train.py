#!/usr/bin/env python3
"""Recommender at scale: generate, build, train, save, load and serve, with time and memory.

Default size is the issue's target: 1,000,000 users x 200,000 assets x 20,000,000 events
(target: training <= 3 minutes on 2 cores). Each phase reports wall time and its own peak RSS:
the kernel's high-water mark (VmHWM) is reset before every phase through
``/proc/self/clear_refs`` so a phase is not charged for an earlier one's peak; where that is
not allowed, the process-wide peak so far is shown and marked with ``*``.

    .venv/bin/python bench/recommender_train.py                       # full size, ~2 min
    .venv/bin/python bench/recommender_train.py --users 100000 --items 20000 --events 2000000

BLAS: ``recommender.train`` pins BLAS to one thread itself (threadpoolctl) while implicit
uses ``--threads`` (0 = all cores) of its own; the serving phase first calls
``pin_blas_threads()`` as a server worker should (``--serve-blas-threads`` to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommender import (
    ALSConfig,
    Event,
    InteractionConfig,
    Recommender,
    SyntheticConfig,
    build_from_columns,
    generate,
    load_model,
    save_model,
    train,
)
from recommender.events import from_epoch
from recommender.serving import pin_blas_threads


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    rss_after_mib: float = 0.0
    exact_peak: bool = True
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    phases: list[Phase] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        phase = Phase(name)
        phase.exact_peak = _reset_peak()
        started = time.perf_counter()
        yield phase
        phase.seconds = time.perf_counter() - started
        if phase.exact_peak:
            phase.peak_rss_mib = _status_kib("VmHWM") / 1024
        else:
            phase.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        phase.rss_after_mib = _status_kib("VmRSS") / 1024
        self.phases.append(phase)
        mark = "" if phase.exact_peak else "*"
        print(
            f"{name:<10} {phase.seconds:8.1f} s   peak RSS {phase.peak_rss_mib:8.0f} MiB{mark}"
            f"   after {phase.rss_after_mib:8.0f} MiB   {phase.notes}",
            flush=True,
        )


def _latencies(call: Callable[[int], object], count: int) -> dict[str, float]:
    times = np.empty(count)
    for i in range(count):
        started = time.perf_counter()
        call(i)
        times[i] = time.perf_counter() - started
    return {
        "p50_ms": round(float(np.percentile(times, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(times, 99)) * 1000, 3),
        "per_s": round(count / float(times.sum()), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--communities", type=int, default=100)
    parser.add_argument("--factors", type=int, default=ALSConfig.factors)
    parser.add_argument("--iterations", type=int, default=ALSConfig.iterations)
    parser.add_argument("--threads", type=int, default=0, help="implicit threads, 0 = all")
    parser.add_argument("--half-life-days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=500, help="serving calls per kind")
    parser.add_argument("--serve-blas-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-model", type=Path, help="copy the saved model file here")
    args = parser.parse_args(argv)

    print(
        f"recommender benchmark: {args.users:,} users x {args.items:,} assets x "
        f"{args.events:,} events, factors={args.factors}, iterations={args.iterations}, "
        f"threads={args.threads or os.cpu_count()}, cpus={os.cpu_count()}",
        flush=True,
    )
    report = Report()
    interaction_config = InteractionConfig(half_life_seconds=args.half_life_days * 86_400)
    als_config = ALSConfig(
        factors=args.factors, iterations=args.iterations, num_threads=args.threads, seed=args.seed
    )

    with report.phase("generate") as phase:
        data = generate(
            SyntheticConfig(
                n_users=args.users,
                n_items=args.items,
                n_events=args.events,
                communities=args.communities,
                seed=args.seed,
            )
        )
        columns = data.columns
    with report.phase("build") as phase:
        interactions = build_from_columns(columns, interaction_config)
        phase.notes = {"nnz": interactions.matrix.nnz}
    del data, columns

    iteration_seconds: list[float] = []
    with report.phase("train") as phase:
        model = train(
            interactions,
            als_config,
            progress=lambda _iteration, seconds: iteration_seconds.append(seconds),
        )
        phase.notes = {
            "per_iteration_s": round(float(np.median(iteration_seconds)), 2),
            "fit_s": round(model.meta.training_seconds, 1),
        }
    del interactions

    with tempfile.TemporaryDirectory(prefix="recbench-") as tmp:
        path = Path(tmp) / "model.bin"
        with report.phase("save") as phase:
            save_model(model, path)
            phase.notes = {"mib": round(path.stat().st_size / 2**20)}
        del model
        if args.keep_model:
            shutil.copyfile(path, args.keep_model)
        with report.phase("load") as phase:
            loaded = load_model(path)
        del loaded
        with report.phase("load_mmap") as phase:
            model = load_model(path, use_mmap=True)

        with report.phase("serve") as phase:
            pin_blas_threads(args.serve_blas_threads)
            started = time.perf_counter()
            rec = Recommender(model)
            init_s = time.perf_counter() - started
            rng = np.random.default_rng(args.seed + 1)
            users = [model.user_ids[int(u)] for u in rng.integers(0, len(model.user_ids), 4096)]
            assets = [model.item_ids[int(a)] for a in rng.integers(0, len(model.item_ids), 4096)]
            at = from_epoch(model.meta.reference_time) + timedelta(minutes=1)
            single = _latencies(lambda i: rec.recommend(users[i % 4096], 10), args.queries)
            folded = _latencies(
                lambda i: rec.recommend(
                    users[i % 4096],
                    10,
                    recent=[Event(users[i % 4096], assets[i % 4096], "like", None, at)],
                ),
                args.queries,
            )
            similar = _latencies(lambda i: rec.similar(assets[i % 4096], 10), args.queries)
            batch = _latencies(
                lambda i: rec.recommend_batch(users[(i * 64) % 4032 : (i * 64) % 4032 + 64], 10),
                max(1, args.queries // 20),
            )
            batch["users_per_s"] = round(batch["per_s"] * 64, 1)
            phase.notes = {
                "init_s": round(init_s, 2),
                "recommend": single,
                "recommend_fold_in": folded,
                "similar": similar,
                "batch_64": batch,
            }

    train_phase = next(p for p in report.phases if p.name == "train")
    verdict = "within" if train_phase.seconds <= 180 else "OVER"
    print(f"training {train_phase.seconds:.1f} s: {verdict} the 3-minute target", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "phases": [p.__dict__ for p in report.phases],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
