#!/usr/bin/env python3
"""Where the time of one ``origin upload`` goes: its progress lines, time-stamped, with the
machine's CPU use between them.

Generates the benchmark's tree (bench/upload_bench.py: seeded, log-uniform sizes), starts an
origin with a private sshd as its durable store (as bench/upload_ab.py does), uploads the tree
once with the live display off (plain progress lines every 5 s) and prints each line with the
seconds since the upload started and the whole machine's busy CPU over the interval before it
(200 % = both cores; softirq included, unlike the benchmarks' per-process figures). The first
line comes with the first bytes sent (before the seventh session's change, once the whole
tree had been hashed and ``/blobs/missing`` answered). With several ``--origin`` executables (e.g.
from bench/origin_at.sh) and ``--rounds``, the same tree goes through each in turn, A B B A, each
run on a new origin and sshd, and each one's run times are listed at the end. Results:
docs/BENCHMARKS.md, "Bulk upload".

    flock /tmp/bench.lock .venv/bin/python bench/upload_timeline.py
    flock /tmp/bench.lock .venv/bin/python bench/upload_timeline.py --rounds 2 \
        --origin .venv/bin/origin --origin "$(bench/origin_at.sh REV /tmp/tl-old)"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench scripts

from upload_ab import start
from upload_bench import (
    DEFAULT_ORIGIN,
    TOKEN,
    TreeFile,
    parse_size,
    plan_tree,
    read_tree,
    write_tree,
)


def busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--min-size", type=parse_size, default=1 << 10)
    p.add_argument("--max-size", type=parse_size, default=64 << 20)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--jobs", type=int, default=4, help="origin upload -j")
    p.add_argument("--workers", type=int, default=2, help="origin serve --workers")
    p.add_argument("--origin", type=Path, action="append", help="origin executable (repeatable)")
    p.add_argument("--rounds", type=int, default=1, help="A B B A rounds over the executables")
    args = p.parse_args()
    exes: list[Path] = args.origin or [DEFAULT_ORIGIN]
    seconds: dict[Path, list[float]] = {exe: [] for exe in exes}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plan = plan_tree(args.files, args.min_size, args.max_size, args.seed)
        tree = work / "tree"
        write_tree(tree, plan, args.seed)
        os.sync()
        for r in range(args.rounds):
            for n, exe in enumerate(exes if r % 2 == 0 else exes[::-1]):
                print(f"-- round {r + 1}: {exe}", flush=True)
                run = work / f"run-{r}-{n}"
                seconds[exe].append(timeline(exe, run, tree, plan, args.jobs, args.workers))
                shutil.rmtree(run)
    for exe, got in seconds.items():
        print(f"{exe}: " + " ".join(f"{s:.1f}" for s in got) + " s")
    return 0


def timeline(
    exe: Path, work: Path, tree: Path, plan: list[TreeFile], jobs: int, workers: int
) -> float:
    """One upload of ``tree`` through a new origin and sshd: its lines time-stamped; its seconds."""
    cores = os.cpu_count() or 1
    work.mkdir()
    setup = start("A", exe, work, workers)
    try:
        read_tree(tree, plan)
        env = {**os.environ, "ORIGIN_TOKEN": TOKEN, "XDG_CACHE_HOME": str(work / "xdg")}
        cmd = [str(exe), "upload", "--url", setup.origin.url, "-j", str(jobs), str(tree)]
        started = time.perf_counter()
        before = busy_jiffies()
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = busy_jiffies()
                busy = 100 * cores * (now[0] - before[0]) / max(1, now[1] - before[1])
                before = now
                seconds = time.perf_counter() - started
                print(f"{seconds:6.1f} s  CPU {busy:3.0f} %  {line.rstrip()}", flush=True)
        if proc.returncode:
            raise RuntimeError(f"{exe} upload exited {proc.returncode}")
        return time.perf_counter() - started
    finally:
        setup.origin.stop()
        setup.sshd.stop()


if __name__ == "__main__":
    sys.exit(main())
