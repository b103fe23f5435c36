#!/usr/bin/env python3
"""The nginx edge (nginx/edge.conf.template) against nginx serving the same files statically.

In one run, on loopback, at 4 KiB, 1 MiB and 64 MiB:

- static: a private nginx with ``root`` on the origin's data directory (bench/blob_bench.py's
  start_nginx: sendfile, a rewrite from /blobs/<digest> to the sharded file);
- edge HIT: the edge configuration in cache mode, the blob already in its cache (every slice a
  HIT), in front of ``origin serve``;
- X-Accel: the edge in X-Accel-Redirect mode (``EDGE_BLOB_CACHE=off``): every GET misses
  nginx's cache by construction, goes to the origin (``accel_redirect=/_accel/``), which
  answers with its headers and the file's internal URI, and nginx sends the file.
- direct: the X-Accel edge plus direct mode (nginx/edge-direct.conf, the Lua module): an
  anonymous GET is answered by nginx from the origin's files and metadata, no origin request.
  Left out with --no-direct, or when the Lua module is not installed.

Targets (issue 7): edge HIT >= 95 % of static at each size; X-Accel >= 80 % of static.

The pieces come from bench/blob_bench.py (processes, wrk with bench/lua/report.lua, CPU
accounting, waiting for a quiet machine) and tests/nginx_server.py (the rendered edge config).
Run it under ``flock /tmp/bench.lock`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import blob_bench as bb

sys.path.insert(0, str(bb.REPO))
from tests.nginx_server import EdgeNginx, lua_available  # after the path insert

KiB, MiB = bb.KiB, bb.MiB
SIZES = "4KiB,1MiB,64MiB"
_UNITS = {"KiB": KiB, "MiB": MiB, "GiB": 1 << 30, "B": 1}
TARGET_HIT = 0.95
TARGET_ACCEL = 0.80
ACCEL_PREFIX = "/_accel/"
KINDS = ("static", "edge HIT", "X-Accel", "direct")


@dataclass
class Cell:
    """The runs of one server at one size, and the origin's CPU during each (X-Accel)."""

    runs: list[bb.Run] = field(default_factory=list)
    origin_cpu_pct: list[float] = field(default_factory=list)

    @property
    def median(self) -> bb.Run:
        return bb.median_run(self.runs)

    @property
    def median_origin_cpu(self) -> float:
        if not self.origin_cpu_pct:
            return 0.0
        i = self.runs.index(self.median)
        return self.origin_cpu_pct[i]


def start_edge(
    args: argparse.Namespace,
    run_dir: Path,
    origin: bb.Server,
    blob_cache: str,
    accel_root: Path | None,
    direct: bool = False,
) -> bb.Server:
    edge = EdgeNginx(
        run_dir,
        [origin.url.removeprefix("http://")],
        blob_cache=blob_cache,
        accel_prefix=ACCEL_PREFIX,
        accel_root=accel_root,
        direct=direct,
        workers=args.workers,
        port=bb.free_port(),
        cache_size="4g",
        access_log=False,
        error_level="warn",
    )
    conf = edge.write_config()
    checked = subprocess.run(edge.command(conf, "-t", "-q"), capture_output=True, text=True)
    if checked.returncode != 0:
        raise bb.BenchError(f"nginx rejects {conf}:\n{checked.stderr}")
    name = "edge-direct" if direct else "edge" if blob_cache != "off" else "edge-accel"
    server = bb.Server(name, edge.command(conf), run_dir / "stdout.log", dict(os.environ))
    server.url = edge.url
    bb.wait_http(server, "/healthz", args.start_timeout)
    bb.log(f"{name} ready at {server.url} (pids {server.pids()})")
    return server


def check_get(server: bb.Server, path: str, data: bytes, want_status: str | None) -> None:
    """The exact bytes, and (when given) the X-Cache-Status the measured path must have."""
    status, headers, body = bb.http_request(server.url, "GET", path, timeout=120)
    if status != 200 or body != data:
        raise bb.BenchError(f"{server.name} GET {path}: {status}, {len(body)} bytes")
    cache = {k.lower(): v for k, v in headers.items()}.get("x-cache-status")
    if want_status is not None and cache != want_status:
        raise bb.BenchError(f"{server.name} GET {path}: X-Cache-Status {cache}, not {want_status}")


def measured_get(
    args: argparse.Namespace,
    server: bb.Server,
    path: str,
    size: int,
    connections: int,
    wrk_log: Path,
    origin: bb.Server | None,
) -> tuple[bb.Run, float]:
    url, script = server.url + path, bb.LUA_DIR / "get.lua"
    bb.run_wrk(args, server, url, script, connections, 1, size, wrk_log)  # warm-up
    cpu0 = origin.cpu_seconds() if origin else 0.0
    run = bb.run_wrk(args, server, url, script, connections, args.duration, size, wrk_log)
    origin_cpu = (origin.cpu_seconds() if origin else 0.0) - cpu0
    # The origin serves this path too: its CPU is the server's, not other load (which makes
    # measure() repeat a run). Its share is reported on its own as well.
    run.server_cpu_s += origin_cpu
    return run, 100 * origin_cpu / run.duration_s if run.duration_s else 0.0


def bench(
    args: argparse.Namespace, work: Path
) -> tuple[dict[int, dict[str, Cell]], dict[str, str]]:
    logs = work / "logs"
    wrk_log = logs / "wrk.log"
    token = "bench_" + secrets.token_hex(24)
    servers: list[bb.Server] = []
    cells: dict[int, dict[str, Cell]] = {
        size: {k: Cell() for k in args.kinds} for size in args.sizes
    }
    try:
        # Two origins, each with its own data directory: a plain one behind the caching edge,
        # and one in X-Accel-Redirect mode whose files the static nginx serves as well.
        # memory_max_object 64KiB on the second: a blob in the memory tier is sent by the
        # origin, so larger blobs would otherwise leave the X-Accel path once promoted.
        plain_dir, accel_dir = work / "data-plain", work / "data-accel"
        for d in (plain_dir, accel_dir, logs / "plain", logs / "accel"):
            d.mkdir(parents=True)
        plain_args = argparse.Namespace(**vars(args))
        accel_args = argparse.Namespace(**vars(args))
        accel_args.origin_env = [
            *args.origin_env,
            f"ORIGIN_ACCEL_REDIRECT={ACCEL_PREFIX}",
            "ORIGIN_MEMORY_MAX_OBJECT=64KiB",
        ]
        plain = bb.start_origin(plain_args, plain_dir, logs / "plain", token)
        plain.name = "origin"
        servers.append(plain)
        accel = bb.start_origin(accel_args, accel_dir, logs / "accel", token)
        accel.name = "origin-accel"
        servers.append(accel)

        bb.log("making and storing blobs")
        blobs: dict[int, tuple[str, bytes]] = {}
        for size in args.sizes:
            data = bytearray(os.urandom(size))
            prefix = f"edge-bench-{secrets.token_hex(8)}".encode()
            data[: len(prefix)] = prefix
            digest = bb.blake3_hex(data)
            for node in (plain, accel):
                bb.put_blob(node.url, token, digest, bytes(data))
            blobs[size] = (digest, bytes(data))

        static = bb.start_nginx(args, accel_dir, work / "static")
        servers.append(static)
        edge = start_edge(args, work / "edge", plain, "edge_blobs", None)
        servers.append(edge)
        edge_accel = start_edge(args, work / "edge-accel", accel, "off", accel_dir / "blobs")
        servers.append(edge_accel)
        by_kind = {"static": static, "edge HIT": edge, "X-Accel": edge_accel}
        if "direct" in args.kinds:
            by_kind["direct"] = start_edge(
                args, work / "edge-direct", accel, "off", accel_dir / "blobs", direct=True
            )
            servers.append(by_kind["direct"])

        for size, (digest, body) in blobs.items():
            path = f"/blobs/{digest}"
            check_get(static, path, body, None)
            check_get(edge, path, body, None)  # fills the cache
            check_get(edge, path, body, "HIT")
            check_get(edge_accel, path, body, "ACCEL" if size > 64 * KiB else None)
            if "direct" in by_kind:
                check_get(by_kind["direct"], path, body, "DIRECT")
        machine = bb.machine_info(args, accel_dir)
        machine["edge config"] = "nginx/edge.conf.template, rendered by tests/nginx_server.py"

        for size, (digest, _) in blobs.items():
            connections = args.large_connections if size >= 64 * MiB else args.connections
            for rnd in range(args.rounds):
                order = args.kinds if rnd % 2 == 0 else tuple(reversed(args.kinds))
                for kind in order:
                    server = by_kind[kind]
                    # The direct edge asks the origin too, when it cannot answer itself: its
                    # CPU counts (it should be about nothing).
                    origin: bb.Server | None = accel if kind in ("X-Accel", "direct") else None
                    what = f"GET {bb.human_size(size)} {kind}"
                    origin_cpu: list[float] = []

                    def one(
                        server: bb.Server = server,
                        origin: bb.Server | None = origin,
                        size: int = size,
                        path: str = f"/blobs/{digest}",
                        connections: int = connections,
                        origin_cpu: list[float] = origin_cpu,
                    ) -> bb.Run:
                        run, cpu = measured_get(
                            args, server, path, size, connections, wrk_log, origin
                        )
                        origin_cpu.append(cpu)
                        return run

                    run = bb.measure(args, what, one)
                    cell = cells[size][kind]
                    cell.runs.append(run)
                    cell.origin_cpu_pct.append(origin_cpu[-1])
                    if run.error_count:
                        raise bb.BenchError(f"{what}: errors {run.errors}")
                    bb.log(
                        f"{what} round {rnd + 1}: {run.rps:,.0f} req/s, {run.mibs:,.0f} MiB/s,"
                        f" server CPU {run.server_cpu_pct:.0f}%"
                        + (f" (origin {origin_cpu[-1]:.0f}%)" if origin else "")
                    )
        return cells, machine
    except BaseException:
        for server in servers:
            tail = server.log_tail(15)
            if tail:
                bb.log(f"last lines of {server.name}'s log:\n{tail}")
        raise
    finally:
        for server in reversed(servers):
            is_nginx = server.name in ("nginx", "edge", "edge-accel", "edge-direct")
            server.stop(signal.SIGQUIT if is_nginx else signal.SIGTERM)


def table(cells: dict[int, dict[str, Cell]], args: argparse.Namespace) -> list[list[str]]:
    direct = "direct" in args.kinds
    head = [
        "size",
        "conns",
        "static req/s",
        "static MiB/s",
        "edge HIT req/s",
        "edge HIT MiB/s",
        "HIT/static",
        "X-Accel req/s",
        "X-Accel MiB/s",
        "X-Accel/static",
        *(["direct req/s", "direct MiB/s", "direct/static"] if direct else []),
        "nginx CPU% "
        + "/".join(k[0] for k in ("static", "hit", "x-accel", *(["direct"] if direct else []))),
        "origin CPU% x" + ("/d" if direct else ""),
        "other CPU% "
        + "/".join(k[0] for k in ("static", "hit", "x-accel", *(["direct"] if direct else []))),
        "targets",
    ]
    rows = [head]
    for size, by_kind in cells.items():
        med = {k: by_kind[k].median for k in args.kinds}
        s, h, x = med["static"], med["edge HIT"], med["X-Accel"]
        hit, acc = h.mibs / s.mibs, x.mibs / s.mibs
        note = ""
        if size <= 64 * KiB:
            note = " (origin answers: no X-Accel at <= 64 KiB)"
        verdict = (
            f"HIT >= {TARGET_HIT:.0%}: {'MET' if hit >= TARGET_HIT else 'MISSED'}; "
            f"X-Accel >= {TARGET_ACCEL:.0%}: {'MET' if acc >= TARGET_ACCEL else 'MISSED'}{note}"
        )
        extra: list[str] = []
        if direct:
            d = med["direct"]
            ratio = d.mibs / s.mibs
            extra = [f"{d.rps:,.0f}", f"{d.mibs:,.0f}", f"{ratio:.0%}"]
            verdict += (
                f"; direct (a GET no nginx cache holds) >= {TARGET_ACCEL:.0%}: "
                f"{'MET' if ratio >= TARGET_ACCEL else 'MISSED'}"
            )
        with_origin = [k for k in ("X-Accel", "direct") if k in args.kinds]
        nginx_cpu = [med["static"].server_cpu_pct, med["edge HIT"].server_cpu_pct] + [
            med[k].server_cpu_pct - by_kind[k].median_origin_cpu for k in with_origin
        ]
        connections = args.large_connections if size >= 64 * MiB else args.connections
        rows.append(
            [
                bb.human_size(size),
                str(connections),
                f"{s.rps:,.0f}",
                f"{s.mibs:,.0f}",
                f"{h.rps:,.0f}",
                f"{h.mibs:,.0f}",
                f"{hit:.0%}",
                f"{x.rps:,.0f}",
                f"{x.mibs:,.0f}",
                f"{acc:.0%}",
                *extra,
                "/".join(f"{c:.0f}" for c in nginx_cpu),
                "/".join(f"{by_kind[k].median_origin_cpu:.0f}" for k in with_origin),
                "/".join(f"{med[k].other_cpu_pct:.0f}" for k in args.kinds),
                verdict,
            ]
        )
    return rows


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def parse_size(text: str) -> int:
    number = text.rstrip("KMGiB")
    return int(number) * _UNITS[text[len(number) :] or "B"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--origin", type=Path, default=bb.DEFAULT_ORIGIN, help="origin executable")
    p.add_argument("--nginx", default="nginx", help="the nginx executable")
    p.add_argument("--wrk", default="wrk", help="the wrk executable")
    p.add_argument("--workers", type=int, default=2, help="origin workers = nginx workers")
    p.add_argument("--duration", type=float, default=6, help="seconds per measured wrk run")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size; medians reported")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (<= cores)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections, 4 KiB, 1 MiB")
    p.add_argument("--large-connections", type=int, default=4, help="wrk connections, 64 MiB")
    p.add_argument("--quiet-idle", type=float, default=80, help="idle %% to wait for first")
    p.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for it")
    p.add_argument("--max-other", type=float, default=30, help="other load %% that repeats a run")
    p.add_argument("--retries", type=int, default=2, help="how often a run is measured again")
    p.add_argument("--start-timeout", type=float, default=60, help="seconds for a server start")
    p.add_argument("--sizes", default=SIZES, help="blob sizes, e.g. 4KiB,1MiB,64MiB")
    p.add_argument("--origin-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--no-direct", action="store_true", help="leave out the direct-mode edge (Lua module)"
    )
    p.add_argument("--work-dir", type=Path, help="parent of the temp dir")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs, configs)")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown here")
    p.add_argument("--json", type=Path, help="also write every run as JSON here")
    args = p.parse_args(argv)
    try:
        args.sizes = [parse_size(text) for text in args.sizes.split(",")]
    except (KeyError, ValueError):
        p.error(f"--sizes: expected sizes such as 4KiB,1MiB,64MiB, got {args.sizes!r}")
    args.kinds = KINDS if not args.no_direct and lua_available() else KINDS[:3]
    for tool in (args.wrk, args.nginx):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (apt-get install -y wrk nginx)")
    if not Path(args.origin).exists():
        p.error(f"{args.origin} not found (scripts/bootstrap.sh makes the venv)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "bench/edge_bench.py", *sys.argv[1:]])

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through bench()'s finally: servers stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-", dir=args.work_dir))
    started = time.monotonic()
    try:
        cells, machine = bench(args, work)
    except bb.BenchError as exc:
        bb.log(f"failed: {exc}")
        return 1
    finally:
        if args.keep:
            bb.log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = table(cells, args)
    print()
    print(render(rows, markdown=False))
    print()
    for key, value in machine.items():
        print(f"{key}: {value}")
    print(f"total time: {time.monotonic() - started:.0f} s")
    if args.markdown:
        text = [
            f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; medians of {args.rounds} rounds,"
            f" {args.duration:g} s per wrk run, wrk -t{args.threads}, {args.workers} workers"
            " for every nginx and origin.",
            "",
            "```",
            command,
            "```",
            "",
            render(rows, markdown=True),
            "",
            "Machine:",
            "",
            *(f"- {k}: {v}" for k, v in machine.items()),
        ]
        args.markdown.write_text("\n".join(text) + "\n")
        bb.log(f"wrote {args.markdown}")
    if args.json:
        doc = {
            "machine": machine,
            "sizes": {
                str(size): {
                    kind: {
                        "runs": [asdict(r) | {"mibs": r.mibs, "rps": r.rps} for r in cell.runs],
                        "origin_cpu_pct": cell.origin_cpu_pct,
                    }
                    for kind, cell in by_kind.items()
                }
                for size, by_kind in cells.items()
            },
        }
        args.json.write_text(json.dumps(doc, indent=2))
        bb.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
