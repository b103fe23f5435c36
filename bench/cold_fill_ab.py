#!/usr/bin/env python3
"""Cold GETs of blobs held only on SFTP, through two origins in turns: how fast a cache fill
streams to the client that starts it.

Both origins (executables, e.g. one from bench/origin_at.sh) use one private sshd as their
durable store, each with its own data dir (so its own disk cache) and no memory tier. Each
round uploads a new blob of ``--size`` through A, then GETs it whole from each origin, the
order alternating A B, B A: every GET is the first of that blob on its origin, so it leads a
fill from SFTP into the local disk cache. Prints the median MiB/s of each side's GET and of the
per-round ratios B/A. Results: docs/BENCHMARKS.md, "Tiers".

With ``--join-after N`` it measures the GET that joins a fill instead: a first GET leads it,
and once that one has read N bytes a second GET of the blob starts; what is printed is the
second one's time to its first byte (and to its last). With ``--clients C`` (and
``--workers W``), C GETs of each cold blob run at once, spread by the kernel over the W
workers: the rate is all their bytes over the time until the last ends, and the origin's
``origin_durable_reads_total`` says how often the durable store was read for them.

    old=$(bench/origin_at.sh 2f38ad2 /tmp/ab-fill)
    flock /tmp/bench.lock .venv/bin/python bench/cold_fill_ab.py --b "$old" --rounds 8
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))  # tests.sshd_server

import blake3  # noqa: E402
from upload_bench import DEFAULT_ORIGIN, TOKEN, MiB, Origin, parse_size  # noqa: E402

from tests.sshd_server import SshdServer  # noqa: E402


def get_seconds(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        while resp.read(1 << 20):
            pass
    return time.perf_counter() - started


def durable_reads(origin_url: str) -> float:
    with urllib.request.urlopen(f"{origin_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    found = re.search(r"^origin_durable_reads_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def concurrent_gets(url: str, clients: int) -> float:
    """Seconds until ``clients`` whole GETs of ``url``, started at once, have all ended."""
    started = time.perf_counter()
    threads = [threading.Thread(target=get_seconds, args=(url,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def joined_get(url: str, after: int) -> tuple[float, float]:
    """A GET that leads the fill, and a second one once the first has read ``after`` bytes:
    the second's seconds to its first byte and to its last."""
    far_enough = threading.Event()

    def lead() -> None:
        got = 0
        with urllib.request.urlopen(url, timeout=120) as resp:
            while chunk := resp.read(1 << 20):
                got += len(chunk)
                if got >= after:
                    far_enough.set()
        far_enough.set()

    leader = threading.Thread(target=lead)
    leader.start()
    far_enough.wait()
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        resp.read(1)
        first = time.perf_counter() - started
        while resp.read(1 << 20):
            pass
    leader.join()
    return first, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, default=DEFAULT_ORIGIN, help="origin executable A")
    parser.add_argument("--b", type=Path, required=True, help="origin executable B")
    parser.add_argument("--size", type=parse_size, default=256 * MiB)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--join-after", type=parse_size, help="measure a GET joining the fill")
    parser.add_argument("--clients", type=int, default=1, help="GETs of each blob at once")
    parser.add_argument("--workers", type=int, default=1, help="origin serve --workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cold-fill-") as tmp:
        root = Path(tmp)
        sshd = SshdServer(root / "sshd").start()
        env = {
            **os.environ, **sshd.origin_env(), "ORIGIN_ADMIN_TOKEN": TOKEN,
            "ORIGIN_MEMORY_CACHE_SIZE": "0",
        }  # fmt: skip
        origins = {
            name: Origin(exe, root / name, env, args.workers, root / f"{name}.log")
            for name, exe in (("A", args.a), ("B", args.b))
        }
        rates: dict[str, list[float]] = {"A": [], "B": []}
        try:
            for i in range(args.rounds):
                data = os.urandom(args.size)
                digest = blake3.blake3(data).hexdigest()
                put = urllib.request.Request(
                    f"{origins['A'].url}/blobs/{digest}", data=data, method="PUT",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )  # fmt: skip
                urllib.request.urlopen(put, timeout=120).close()
                del data
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    url = f"{origins[name].url}/blobs/{digest}"
                    if args.clients > 1:
                        before = durable_reads(origins[name].url)
                        seconds = concurrent_gets(url, args.clients)
                        rates[name].append(args.clients * args.size / MiB / seconds)
                        time.sleep(1.5)  # each worker publishes its counts once a second
                        reads = durable_reads(origins[name].url) - before
                        print(f"  {name}: {args.clients} GETs in {seconds:.2f} s, "
                              f"{reads:.0f} durable read(s)", flush=True)  # fmt: skip
                    elif args.join_after is None:
                        rates[name].append(args.size / MiB / get_seconds(url))
                    else:
                        first, whole = joined_get(url, args.join_after)
                        rates[name].append(first)
                        print(f"  {name}: joiner's first byte {first * 1000:.0f} ms, "
                              f"last {whole * 1000:.0f} ms", flush=True)  # fmt: skip
                if args.join_after is None:
                    print(f"round {i}: A {rates['A'][-1]:.0f} MiB/s, "
                          f"B {rates['B'][-1]:.0f} MiB/s", flush=True)  # fmt: skip
        finally:
            for origin in origins.values():
                origin.stop()
            sshd.stop()
    if args.join_after is not None:
        print(f"median joiner's first byte: A {statistics.median(rates['A']) * 1000:.0f} ms, "
              f"B {statistics.median(rates['B']) * 1000:.0f} ms")  # fmt: skip
        return 0
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    print(f"median cold GET: A {statistics.median(rates['A']):.0f} MiB/s, "
          f"B {statistics.median(rates['B']):.0f} MiB/s; B/A {statistics.median(ratios):.2f} "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
