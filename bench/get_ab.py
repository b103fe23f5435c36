#!/usr/bin/env python3
"""Two origins, interleaved: ``wrk`` GETs of one blob from each, in turns A B B A.

For GET-path changes smaller than this machine's drift between runs (blob_bench.py measures
one origin against nginx; two of its runs on one day differed by 20 % and more). Each side is
``origin serve`` (an executable, e.g. one from bench/origin_at.sh) on its own data dir with
the embedded default (memory tier on), both started once and kept running; the blob is PUT
into each and checked, then every round runs wrk against both. Prints each side's median
req/s and the median of the per-pair ratios B/A. Results: docs/BENCHMARKS.md.

    old=$(bench/origin_at.sh 396af7b /tmp/ab-get)
    flock /tmp/bench.lock .venv/bin/python bench/get_ab.py --b "$old" --size 1MiB
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import blake3  # noqa: E402
from upload_bench import DEFAULT_ORIGIN, TOKEN, Origin, parse_size  # noqa: E402


def wrk_rate(wrk: str, url: str, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"no rate in wrk's output:\n{out}")
    return float(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, default=DEFAULT_ORIGIN, help="origin executable A")
    parser.add_argument("--b", type=Path, required=True, help="origin executable B")
    parser.add_argument("--size", type=parse_size, default=1 << 20)
    parser.add_argument("--rounds", type=int, default=6, help="pairs of runs (A B, then B A)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wrk", default="wrk")
    args = parser.parse_args()
    data = os.urandom(args.size)
    digest = blake3.blake3(data).hexdigest()
    env = {**os.environ, "ORIGIN_ADMIN_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="get-ab-") as tmp:
        root = Path(tmp)
        origins = {
            name: Origin(exe, root / name, env, args.workers, root / f"{name}.log")
            for name, exe in (("A", args.a), ("B", args.b))
        }
        rates: dict[str, list[float]] = {"A": [], "B": []}
        try:
            for origin in origins.values():
                put = urllib.request.Request(
                    f"{origin.url}/blobs/{digest}", data=data, method="PUT",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )  # fmt: skip
                urllib.request.urlopen(put, timeout=60).close()
                with urllib.request.urlopen(f"{origin.url}/blobs/{digest}", timeout=60) as r:
                    if r.read() != data:
                        raise RuntimeError(f"{origin.url} served other bytes")
                wrk_rate(
                    args.wrk,
                    f"{origin.url}/blobs/{digest}",
                    argparse.Namespace(
                        threads=args.threads, connections=args.connections, duration=1
                    ),
                )  # warm-up
            for i in range(args.rounds):
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    rates[name].append(wrk_rate(args.wrk, f"{origins[name].url}/blobs/{digest}",
                                                args))  # fmt: skip
                print(f"round {i}: A {rates['A'][-1]:,.0f} req/s, B {rates['B'][-1]:,.0f} req/s",
                      flush=True)  # fmt: skip
        finally:
            for origin in origins.values():
                origin.stop()
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    print(
        f"GET {args.size} bytes, wrk -t{args.threads} -c{args.connections}: median "
        f"A {statistics.median(rates['A']):,.0f} req/s, B {statistics.median(rates['B']):,.0f}"
        f" req/s; B/A {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
