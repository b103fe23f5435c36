#!/usr/bin/env python3
"""Two origins, interleaved: ``origin upload`` through each into its own SFTP store, in turns.

For changes whose effect is smaller than this machine's drift between runs (20 % and more):
each setup is ``origin serve`` (an executable, e.g. one from bench/origin_at.sh) with its own
private sshd as the durable store, both started once and kept running; rounds alternate
A B B A, on a tree of large files and then on one of small files. Before each upload every
file gets a new 64-byte header (so every blob is new) and is read once (page cache warm).
Each side's own ``origin upload -j J`` sends the tree.

Prints, per setup, the medians of MiB/s (large) or files/s (small) and of the CPU per MiB or
per file of the origin (server and workers), of sshd (listener and sessions) and of the client,
then the median and the list of the per-pair ratios B/A of the origin's CPU. Results:
docs/BENCHMARKS.md, "Bulk upload".

    old=$(bench/origin_at.sh 0056549 /tmp/ab-base)
    flock /tmp/bench.lock .venv/bin/python bench/upload_ab.py --b "$old" --rounds 4
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))  # tests.sshd_server

from upload_bench import (  # noqa: E402
    DEFAULT_ORIGIN,
    HEADER,
    TOKEN,
    MiB,
    Origin,
    TreeFile,
    children_cpu,
    log,
    parse_size,
    read_tree,
    tree_cpu,
)

from tests.sshd_server import SshdServer  # noqa: E402


@dataclass
class Setup:
    name: str
    exe: Path
    sshd: SshdServer
    origin: Origin
    xdg: Path


@dataclass(frozen=True)
class Sample:
    seconds: float
    origin: float  # CPU seconds
    sshd: float
    client: float


def start(name: str, exe: Path, work: Path, workers: int) -> Setup:
    sshd = SshdServer(work / f"sshd-{name}")
    sshd.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGIN_")}
    env |= {"ORIGIN_ADMIN_TOKEN": TOKEN, **sshd.origin_env(sshd.root / "store")}
    try:
        origin = Origin(exe, work / f"node-{name}", env, workers, work / f"origin-{name}.log")
    except BaseException:
        sshd.stop()
        raise
    return Setup(name, exe, sshd, origin, work / f"xdg-{name}")


def make_tree(root: Path, count: int, size: int) -> list[TreeFile]:
    body = os.urandom(max(size - HEADER, 0))
    plan = [TreeFile(f"f{i:05d}.bin", size) for i in range(count)]
    root.mkdir(parents=True)
    for f in plan:
        (root / f.rel).write_bytes(secrets.token_bytes(HEADER)[:size] + body)
    return plan


def renew(root: Path, plan: list[TreeFile]) -> None:
    """A new header for every file: new blobs for the next upload, same sizes."""
    for f in plan:
        with open(root / f.rel, "r+b") as fh:
            fh.write(secrets.token_bytes(min(HEADER, f.size)))


def upload(setup: Setup, root: Path, plan: list[TreeFile], jobs: int) -> Sample:
    renew(root, plan)
    read_tree(root, plan)
    assert setup.sshd.proc is not None
    env = {**os.environ, "ORIGIN_TOKEN": TOKEN, "XDG_CACHE_HOME": str(setup.xdg)}
    cmd = [str(setup.exe), "upload", "--url", setup.origin.url, "-j", str(jobs), "--no-progress"]
    # The client is this process's only child reaped in between (with its hashing processes).
    before = (tree_cpu(setup.origin.proc.pid), tree_cpu(setup.sshd.proc.pid), children_cpu())
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, str(root)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = (tree_cpu(setup.origin.proc.pid), tree_cpu(setup.sshd.proc.pid), children_cpu())
    if done.returncode or f"{len(plan)} uploaded" not in done.stdout:
        raise RuntimeError(f"{setup.name}: origin upload failed:\n{done.stdout[-2000:]}")
    origin, sshd, client = (b - a for a, b in zip(before, after, strict=True))
    return Sample(seconds, origin, sshd, client)


def report(kind: str, unit: float, per: str, samples: dict[str, list[Sample]]) -> None:
    """``unit``: MiB (large) or files (small) per upload; ``per``: what the CPU is per."""
    ms = 1000 / unit
    for name, got in samples.items():
        rate = statistics.median(unit / s.seconds for s in got)
        origin, sshd, client = (
            statistics.median(getattr(s, part) * ms for s in got)
            for part in ("origin", "sshd", "client")
        )
        what = "MiB/s" if per == "MiB" else "files/s"
        print(
            f"{kind:5} {name}: {rate:6.1f} {what}  CPU ms per {per}: origin {origin:.2f},"
            f" sshd {sshd:.2f}, client {client:.2f}"
        )
    a, b = samples["A"], samples["B"]
    ratios = [y.origin / x.origin for x, y in zip(a, b, strict=True)]
    print(
        f"{kind:5} origin CPU B/A per pair: median {statistics.median(ratios):.3f};",
        " ".join(f"{r:.2f}" for r in ratios),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", type=Path, default=DEFAULT_ORIGIN, help="origin executable A")
    p.add_argument("--b", type=Path, required=True, help="origin executable B")
    p.add_argument("--rounds", type=int, default=4, help="A B B A rounds (pairs per tree)")
    p.add_argument("--large", type=int, default=24, help="files in the large tree")
    p.add_argument("--large-size", type=parse_size, default=64 * MiB)
    p.add_argument("--small", type=int, default=1000, help="files in the small tree")
    p.add_argument("--small-size", type=parse_size, default=16 * 1024)
    p.add_argument("--jobs", type=int, default=4, help="origin upload -j")
    p.add_argument("--workers", type=int, default=2, help="origin serve --workers")
    p.add_argument("--tmp", default=tempfile.gettempdir())
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="upload-ab-", dir=args.tmp) as tmp:
        work = Path(tmp)
        trees = {
            "large": (work / "large", make_tree(work / "large", args.large, args.large_size)),
            "small": (work / "small", make_tree(work / "small", args.small, args.small_size)),
        }
        setups: list[Setup] = []
        try:
            for name, exe in (("A", args.a), ("B", args.b)):
                setups.append(start(name, exe, work, args.workers))
            for kind, (root, plan) in trees.items():
                upload(setups[0], root, plan, args.jobs)  # warm-up: connections, directories
                upload(setups[1], root, plan, args.jobs)
                samples: dict[str, list[Sample]] = {"A": [], "B": []}
                for r in range(args.rounds):
                    order = setups if r % 2 == 0 else setups[::-1]
                    for setup in order:
                        samples[setup.name].append(upload(setup, root, plan, args.jobs))
                    log(f"{kind} round {r + 1}/{args.rounds}")
                if kind == "large":
                    report(kind, len(plan) * args.large_size / MiB, "MiB", samples)
                else:
                    report(kind, len(plan), "file", samples)
        finally:
            for setup in setups:
                setup.origin.stop()
                setup.sshd.stop()
    for name, exe in (("A", args.a), ("B", args.b)):
        code = subprocess.run(
            ["git", "-C", str(exe.resolve().parent), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"{name}: {exe} ({code or '?'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
