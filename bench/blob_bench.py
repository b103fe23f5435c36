#!/usr/bin/env python3
"""Blob endpoints of the origin against a private nginx serving the same files, in one run.

What it does (see bench/README.md for how to run it, docs/BENCHMARKS.md for results):

1. Makes random 4 KiB, 1 MiB and 64 MiB blobs, starts ``origin serve --workers N`` on a free
   loopback port with a fresh data directory, and PUTs the blobs into it.
2. Starts a private nginx (generated config, ``daemon off``, its own pid file and logs,
   ``worker_processes N``, ``sendfile on; tcp_nopush on;``) whose root is the origin's data
   directory, with a rewrite so ``/blobs/<digest>`` is the same URL for both servers.
3. GET: wrk against each server with the same threads and connections; requests/s, MiB/s and
   the origin/nginx ratio. Rounds alternate which server goes first; medians are reported.
4. PUT 64 MiB: wrk repeating one body (the blob exists, so the origin reads and discards it),
   then distinct random blobs (each one new: hashed, written, fsynced, linked) from this
   process, one stream and two concurrent streams; and ``dd conv=fsync`` of the same bytes into
   the data directory's file system, buffered and with ``oflag=direct``.
5. Prints a table, optionally writes Markdown and JSON, and always stops both servers.

Only loopback addresses are used; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import blake3

KiB = 1 << 10
MiB = 1 << 20
HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
LUA_DIR = BENCH_DIR / "lua"
REPO = BENCH_DIR.parent
DEFAULT_ORIGIN = REPO / ".venv" / "bin" / "origin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1

# Targets from the issue: (row key, kind, threshold).
TARGET_GET_64M = 0.90  # origin MiB/s >= 90 % of nginx's for 64 MiB GET
TARGET_GET_1M = 0.60  # 1 MiB GET >= 60 % of nginx's MiB/s (tiers issue; the blob issue: 50 %)
TARGET_GET_4K = 0.25  # 4 KiB GET from the memory tier >= 25 % of nginx's requests/s
TARGET_PUT_MIBS = 450.0  # 64 MiB PUT of a new blob, MiB/s


class BenchError(RuntimeError):
    """A server did not start, answered wrongly, or a tool is missing; the message says which."""


# -- small helpers ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def shard_path(root: Path, digest: str) -> Path:
    return root / "blobs" / digest[0:2] / digest[2:4] / digest


def blake3_hex(data: bytes | bytearray) -> str:
    return str(blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest())


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this harness dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_text(cmd: Sequence[str]) -> str:
    """stdout+stderr of a short command, or a note that it failed."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({cmd[0]}: {exc})"
    return (done.stdout + done.stderr).strip()


# -- processes ----------------------------------------------------------------------------------


class Server:
    """A server in its own session (its whole process group can be stopped), logging to a file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        log(f"starting {name}: {shlex.join(cmd)}")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # no other thread runs at this point
        )
        self.url = ""

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.proc.returncode}; its log ends with:\n"
                + self.log_tail()
            )

    def pids(self) -> list[int]:
        """Every live process in the server's process group (supervisor/master and workers)."""
        pgid = self.proc.pid
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # field 5 of stat: pgrp
                found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / CLK_TCK

    def stop(self, graceful: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            log(f"stopping {self.name} (pid {self.proc.pid})")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, graceful)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout:.0f} s: SIGKILL")
        # Whatever is left of the group (workers of a dead master) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def wait_http(server: Server, path: str, timeout: float) -> None:
    """Until GET ``path`` answers 200 (the server is ready)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            status, _, _ = http_request(server.url, "GET", path, timeout=2)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{server.name}: GET {path} not 200 after {timeout:.0f} s ({last})")


def http_request(
    base: str,
    method: str,
    path: str,
    body: bytes | bytearray | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), data
    finally:
        conn.close()


# -- the origin ---------------------------------------------------------------------------------


def start_origin(
    args: argparse.Namespace,
    data_dir: Path,
    logs: Path,
    token: str,
    name: str = "origin",
    extra_env: dict[str, str] | None = None,
) -> Server:
    origin = str(args.origin)
    help_text = run_text([origin, "serve", "--help"])
    port = free_port()
    serve = ["serve", "--host", HOST, "--port", str(port), "--workers", str(args.workers)]
    # The contract puts --data-dir after ``serve``; older builds take it before the command.
    if "--data-dir" in help_text:
        cmd = [origin, *serve, "--data-dir", str(data_dir)]
    else:
        cmd = [origin, "--data-dir", str(data_dir), *serve]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGIN_")}
    env["ORIGIN_ADMIN_TOKEN"] = token
    for item in args.origin_env:
        key, _, value = item.partition("=")
        env[key] = value
    env.update(extra_env or {})
    server = Server(name, cmd, logs / f"{name}.log", env)
    deadline = time.monotonic() + args.start_timeout
    pattern = re.compile(rf"http://{re.escape(HOST)}:(\d+)")
    while time.monotonic() < deadline:
        server.check_alive()
        match = pattern.search(server.log_path.read_text(errors="replace"))
        if match:
            server.url = f"http://{HOST}:{match.group(1)}"
            break
        time.sleep(0.1)
    else:
        server.stop()
        raise BenchError(
            f"origin printed no URL in {args.start_timeout:.0f} s:\n{server.log_tail()}"
        )
    wait_http(server, "/healthz", args.start_timeout)
    log(f"{name} ready at {server.url} (pids {server.pids()})")
    return server


def start_redis(args: argparse.Namespace, run_dir: Path) -> Server:
    """A private redis-server configured as the README says a Redis tier should be."""
    run_dir.mkdir()
    port = free_port()
    cmd = [args.redis, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
           "--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru",
           "--dir", str(run_dir)]  # fmt: skip
    server = Server("redis", cmd, run_dir / "redis.log", dict(os.environ))
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                server.url = f"redis://{HOST}:{port}/0"
                return server
        time.sleep(0.1)
    server.stop()
    raise BenchError(f"redis-server did not answer in {args.start_timeout:.0f} s")


def tier_hits(server: Server) -> dict[str, float]:
    """Reads served by each tier (``origin_cache_hits_total``) and by the durable store
    (``origin_durable_reads_total``), from the origin's /metrics."""
    status, _, body = http_request(server.url, "GET", "/metrics")
    if status != 200:
        raise BenchError(f"{server.name}: GET /metrics -> {status}")
    text = body.decode()
    hits: dict[str, float] = {}
    for m in re.finditer(r'^origin_cache_hits_total\{tier="([^"]+)"\} (\S+)$', text, re.M):
        hits[m.group(1)] = float(m.group(2))
    durable = re.search(r"^origin_durable_reads_total (\S+)$", text, re.M)
    if durable:
        hits["durable store"] = float(durable.group(1))
    return hits


def put_blob(url: str, token: str, digest: str, data: bytes | bytearray) -> int:
    status, _, body = http_request(
        url,
        "PUT",
        f"/blobs/{digest}",
        body=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        timeout=300,
    )
    if status not in (200, 201):
        raise BenchError(f"PUT /blobs/{digest} -> {status}: {body[:500]!r}")
    return status


# -- nginx --------------------------------------------------------------------------------------

NGINX_CONF = """\
# Generated by bench/blob_bench.py: a private nginx for one benchmark run.
daemon off;
master_process on;
worker_processes {workers};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    types {{ }}
    default_type application/octet-stream;

    server {{
        # Like the origin, one listening socket per worker (SO_REUSEPORT): the kernel spreads
        # connections evenly; without it, a few keep-alive connections can all land on one.
        listen {host}:{port} reuseport;
        root {data};
        # The origin's URL shape: /blobs/<digest> -> <data>/blobs/ab/cd/<digest>
        location /blobs/ {{
            rewrite "^/blobs/(([0-9a-f]{{2}})([0-9a-f]{{2}})[0-9a-f]{{60}})$" /blobs/$2/$3/$1 break;
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location = /healthz {{
            return 200 "ok";
        }}
    }}
}}
"""


def start_nginx(args: argparse.Namespace, data_dir: Path, run_dir: Path) -> Server:
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = ""
    if os.geteuid() == 0:
        # As root nginx's workers would switch to "nobody", which may not read a private temp
        # dir; they run as the invoking user instead, like the origin does.
        import pwd

        user = f"user {pwd.getpwuid(os.getuid()).pw_name};"
    conf = run_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=args.workers, run=run_dir, user=user, host=HOST, port=port, data=data_dir
        )
    )
    nginx = shutil.which(args.nginx) or args.nginx
    test = subprocess.run(
        [nginx, "-t", "-q", "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if test.returncode != 0:
        raise BenchError(f"nginx rejects the generated config {conf}:\n{test.stderr}")
    cmd = [nginx, "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(conf)]
    server = Server("nginx", cmd, run_dir / "stdout.log", dict(os.environ))
    server.url = f"http://{HOST}:{port}"
    wait_http(server, "/healthz", args.start_timeout)
    log(f"nginx ready at {server.url} (pids {server.pids()})")
    return server


# -- wrk ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run against one server."""

    server: str
    requests: int
    bytes_read: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    server_cpu_s: float
    client_cpu_s: float
    body_bytes: int  # bytes per request that count for MiB/s (response for GET, body for PUT)
    # Whole machine during the run, % of all CPUs: user, system, softirq, steal, idle, iowait.
    machine: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def mibs(self) -> float:
        if not self.duration_s:
            return 0.0
        if not self.body_bytes:  # counted by the byte, unfinished responses included
            return self.bytes_read / MiB / self.duration_s
        return self.requests * self.body_bytes / MiB / self.duration_s

    @property
    def server_cpu_pct(self) -> float:
        return 100 * self.server_cpu_s / self.duration_s if self.duration_s else 0.0

    @property
    def client_cpu_pct(self) -> float:
        return 100 * self.client_cpu_s / self.duration_s if self.duration_s else 0.0

    @property
    def other_cpu_pct(self) -> float:
        """Busy CPU% (100 = one core) not charged to the server or the client: other load.

        Softirq time that lands on a server or client process is charged to it as system time
        (tick accounting), so it is not counted twice; softirq run by ksoftirqd counts here.
        """
        if not self.machine:
            return 0.0
        busy = (100 - self.machine["idle"] - self.machine["iowait"]) * (os.cpu_count() or 1)
        return max(0.0, busy - self.server_cpu_pct - self.client_cpu_pct)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat, in the order of ``_STAT_FIELDS``."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1 : 1 + len(_STAT_FIELDS)]]


def machine_split(before: list[int], after: list[int]) -> dict[str, float]:
    delta = dict(
        zip(_STAT_FIELDS, (b - a for a, b in zip(before, after, strict=True)), strict=True)
    )
    total = sum(delta.values()) or 1
    user = delta["user"] + delta["nice"]
    irq = delta["irq"] + delta["softirq"]
    return {
        "user": 100 * user / total,
        "system": 100 * delta["system"] / total,
        "softirq": 100 * irq / total,
        "steal": 100 * delta["steal"] / total,
        "iowait": 100 * delta["iowait"] / total,
        "idle": 100 * delta["idle"] / total,
    }


def wait_quiet(args: argparse.Namespace, what: str) -> None:
    """Wait (bounded) until the machine is idle, so that no other load skews the next run."""
    if args.quiet_wait <= 0:
        return
    deadline = time.monotonic() + args.quiet_wait
    waited = False
    while True:
        before = cpu_times()
        time.sleep(0.5)
        idle = machine_split(before, cpu_times())["idle"]
        if idle >= args.quiet_idle:
            if waited:
                log(f"machine idle again ({idle:.0f}%): {what}")
            return
        if time.monotonic() > deadline:
            log(f"WARNING: machine still busy (idle {idle:.0f}%); measuring {what} anyway")
            return
        if not waited:
            log(f"machine busy (idle {idle:.0f}% < {args.quiet_idle:g}%): waiting before {what}")
            waited = True


def measure(args: argparse.Namespace, what: str, run: Callable[[], Run]) -> Run:
    """``run()`` on a quiet machine; again (up to --retries times) if other load showed up."""
    for attempt in range(args.retries + 1):
        wait_quiet(args, what)
        result = run()
        if result.other_cpu_pct <= args.max_other or attempt == args.retries:
            if result.other_cpu_pct > args.max_other:
                log(f"WARNING: {what}: other load {result.other_cpu_pct:.0f}% CPU; kept anyway")
            return result
        log(f"{what}: other load {result.other_cpu_pct:.0f}% CPU during the run; again")
    raise AssertionError("unreachable")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    args: argparse.Namespace,
    server: Server,
    url: str,
    script: Path,
    connections: int,
    duration: float,
    body_bytes: int,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Run:
    threads = max(1, min(args.threads, connections))
    cmd = [
        args.wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "60s",
        "-s",
        str(script),
        url,
    ]
    server.check_alive()
    cpu0, client0, m0 = server.cpu_seconds(), children_cpu(), cpu_times()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    cpu1, client1, m1 = server.cpu_seconds(), children_cpu(), cpu_times()
    with open(log_path, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{done.stdout}{done.stderr}\n")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr}")
    doc: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    server.check_alive()
    return Run(
        server=server.name,
        requests=int(doc["requests"]),
        bytes_read=int(doc["bytes"]),
        duration_s=doc["duration_us"] / 1e6,
        errors={k: int(v) for k, v in doc["errors"].items()},
        latency_us={k: float(v) for k, v in doc["latency_us"].items()},
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=client1 - client0,
        body_bytes=body_bytes,
        machine=machine_split(m0, m1),
    )


# -- GET from this process ---------------------------------------------------------------------


def py_get(server: Server, path: str, connections: int, duration: float, recv_size: int) -> Run:
    """GET ``path`` over and over on keep-alive sockets, one thread each, for ``duration`` s.

    A second client beside wrk, which reads 8 KiB per read(2) (its RECVBUF) and so spends a
    core on syscalls at a few GB/s; this one reads ``recv_size`` bytes per recv_into(2) (the
    GIL is released there), so less of the two cores goes to the client. MiB/s counts every
    body byte received before the deadline, including the last, unfinished response.
    """
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    counts = {"requests": 0, "bytes": 0}
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections + 1)
    deadline = [0.0]

    def worker() -> None:
        buf = bytearray(recv_size)
        view = memoryview(buf)
        requests = received = 0
        mine: list[float] = []
        try:
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                barrier.wait()
                while time.perf_counter() < deadline[0]:
                    t0 = time.perf_counter()
                    sock.sendall(request)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed before the response headers")
                        head += chunk
                    head, _, rest = head.partition(b"\r\n\r\n")
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise BenchError(f"{server.name}: {head.splitlines()[0]!r}")
                    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if match is None:
                        raise BenchError(f"{server.name}: no Content-Length")
                    remaining = int(match.group(1)) - len(rest)
                    received += len(rest)
                    while remaining > 0:
                        n = sock.recv_into(view, min(remaining, recv_size))
                        if n == 0:
                            raise ConnectionError("closed in the body")
                        remaining -= n
                        received += n
                        if time.perf_counter() >= deadline[0]:
                            break
                    if remaining == 0:
                        requests += 1
                        mine.append(time.perf_counter() - t0)
        except BaseException as exc:
            with lock:
                failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        with lock:
            counts["requests"] += requests
            counts["bytes"] += received
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    cpu0, self0, m0 = server.cpu_seconds(), time.process_time(), cpu_times()
    t0 = time.perf_counter()
    deadline[0] = t0 + duration
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    for t in threads:
        t.join(duration + 120)
    elapsed = time.perf_counter() - t0
    cpu1, self1, m1 = server.cpu_seconds(), time.process_time(), cpu_times()
    if failures:
        raise BenchError(f"GET client failed against {server.name}: {failures[0]!r}")
    return Run(
        server=server.name,
        requests=counts["requests"],
        bytes_read=counts["bytes"],
        duration_s=elapsed,
        errors={},
        latency_us={
            "mean": statistics.fmean(latencies) * 1e6 if latencies else 0.0,
            "max": max(latencies, default=0.0) * 1e6,
            "p50": statistics.median(latencies) * 1e6 if latencies else 0.0,
        },
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=self1 - self0,
        body_bytes=0,
        machine=machine_split(m0, m1),
    )


def get_once(
    args: argparse.Namespace,
    server: Server,
    path: str,
    client: str,
    connections: int,
    size: int,
    wrk_log: Path,
) -> Run:
    """One measured GET run with ``client`` ("wrk" or "py"), after a 1 s unmeasured warm-up."""
    if client == "wrk":
        url, script = server.url + path, LUA_DIR / "get.lua"
        run_wrk(args, server, url, script, connections, 1, size, wrk_log)
        return run_wrk(args, server, url, script, connections, args.duration, size, wrk_log)
    py_get(server, path, connections, 1, args.recv_size)
    return py_get(server, path, connections, args.duration, args.recv_size)


# -- PUT from this process ----------------------------------------------------------------------


def distinct_blobs(base: bytes, count: int, tag: str) -> list[tuple[str, bytearray]]:
    """``count`` new blobs of ``len(base)`` bytes: a unique prefix over shared random bytes."""
    blobs = []
    for i in range(count):
        data = bytearray(base)
        prefix = f"{tag}-{i}-{secrets.token_hex(16)}".encode()
        data[: len(prefix)] = prefix
        blobs.append((blake3_hex(data), data))
    return blobs


def put_streams(
    server: Server, token: str, streams: list[list[tuple[str, bytearray]]]
) -> tuple[Run, list[float]]:
    """PUT each stream's blobs in order on one keep-alive connection, streams concurrently."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    statuses: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(streams) + 1)

    def worker(blobs: list[tuple[str, bytearray]]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            conn.connect()
            barrier.wait()
            for digest, data in blobs:
                t0 = time.perf_counter()
                conn.request(
                    "PUT",
                    f"/blobs/{digest}",
                    body=data,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/octet-stream",
                    },
                )
                resp = conn.getresponse()
                resp.read()
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses.append(resp.status)
        except BaseException as exc:
            with lock:
                failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    cpu0, self0, m0 = server.cpu_seconds(), time.process_time(), cpu_times()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1, self1, m1 = server.cpu_seconds(), time.process_time(), cpu_times()
    if failures:
        raise BenchError(f"PUT stream failed: {failures[0]!r}")
    bad = [s for s in statuses if s != 201]
    if bad:
        raise BenchError(f"PUT of a new blob answered {bad[0]} (expected 201)")
    size = len(streams[0][0][1])
    run = Run(
        server=server.name,
        requests=len(statuses),
        bytes_read=0,
        duration_s=elapsed,
        errors={},
        latency_us={
            "mean": statistics.fmean(latencies) * 1e6,
            "max": max(latencies) * 1e6,
            "p50": statistics.median(latencies) * 1e6,
        },
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=self1 - self0,
        body_bytes=size,
        machine=machine_split(m0, m1),
    )
    return run, latencies


# -- dd -----------------------------------------------------------------------------------------


def run_dd(src: Path, dest_dir: Path, direct: bool, log_path: Path) -> float:
    """MiB/s of ``dd bs=1M conv=fsync`` (optionally ``oflag=direct``) into ``dest_dir``."""
    dest = dest_dir / f"dd-probe-{secrets.token_hex(4)}.tmp"
    cmd = ["dd", f"if={src}", f"of={dest}", "bs=1M", "conv=fsync"]
    if direct:
        cmd.append("oflag=direct")
    size = src.stat().st_size
    try:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        elapsed = time.perf_counter() - t0
    finally:
        dest.unlink(missing_ok=True)
    with open(log_path, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{done.stderr}\n")
    if done.returncode != 0:
        raise BenchError(f"dd failed: {done.stderr}")
    # dd's own line: "67108864 bytes (67 MB, 64 MiB) copied, 0.0912 s, 736 MB/s"
    match = re.search(r"copied, ([0-9.,]+) s", done.stderr)
    seconds = float(match.group(1).replace(",", ".")) if match else elapsed
    return size / MiB / seconds


# -- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    test: str
    origin: Run | None = None
    nginx: Run | None = None
    origin_runs: list[Run] = field(default_factory=list)
    nginx_runs: list[Run] = field(default_factory=list)
    connections: int = 0
    note: str = ""
    target: str = ""
    met: bool | None = None
    extra_mibs: float | None = None  # dd rows: MiB/s measured outside both servers

    @property
    def ratio(self) -> float | None:
        if self.origin is None or self.nginx is None or not self.nginx.mibs:
            return None
        return self.origin.mibs / self.nginx.mibs


def median_run(runs: list[Run]) -> Run:
    """The run with the median MiB/s (a real run, so its latency and CPU belong to it)."""
    ordered = sorted(runs, key=lambda r: r.mibs)
    return ordered[(len(ordered) - 1) // 2]


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def table_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    head = [
        "test",
        "conns",
        "origin req/s",
        "origin MiB/s",
        "nginx req/s",
        "nginx MiB/s",
        "origin/nginx",
        "origin p50 ms",
        "nginx p50 ms",
        "MiB/s range o; n",
        "server CPU% o/n",
        "client CPU% o/n",
        "other CPU% o/n",
        "target",
    ]
    body = []
    for row in rows:
        o, n = row.origin, row.nginx
        cpu = "/".join([fmt(o.server_cpu_pct if o else None), fmt(n.server_cpu_pct if n else None)])
        client_cpu = "/".join(
            [fmt(o.client_cpu_pct if o else None), fmt(n.client_cpu_pct if n else None)]
        )
        idle = "/".join([fmt(o.other_cpu_pct if o else None), fmt(n.other_cpu_pct if n else None)])
        spread = "; ".join(
            f"{min(r.mibs for r in runs):,.0f}-{max(r.mibs for r in runs):,.0f}"
            for runs in (row.origin_runs, row.nginx_runs)
            if runs
        )
        if row.extra_mibs is not None:
            cpu = client_cpu = idle = "-"
            spread = row.note
        if row.met is None:
            verdict = row.target or ""
        else:
            verdict = f"{row.target}: {'MET' if row.met else 'MISSED'}"
        errors = (o.error_count if o else 0) + (n.error_count if n else 0)
        test = row.test + (f" ({errors} errors!)" if errors else "")
        body.append(
            [
                test,
                str(row.connections) if row.connections else "-",
                fmt(o.rps if o else None, ",.1f"),
                fmt(o.mibs if o else row.extra_mibs, ",.0f"),
                fmt(n.rps if n else None, ",.1f"),
                fmt(n.mibs if n else None, ",.0f"),
                fmt(row.ratio * 100 if row.ratio is not None else None, ".0f")
                + ("%" if row.ratio is not None else ""),
                fmt(o.latency_us["p50"] / 1000 if o else None, ",.2f"),
                fmt(n.latency_us["p50"] / 1000 if n else None, ",.2f"),
                spread or "-",
                cpu,
                client_cpu,
                idle,
                verdict,
            ]
        )
    return head, body


def render_text(rows: list[Row]) -> str:
    head, body = table_rows(rows)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    head, body = table_rows(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def machine_info(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    venv_python = Path(args.origin).parent / "python"
    aiohttp_version = run_text(
        [str(venv_python), "-c", "import aiohttp; print(aiohttp.__version__)"]
    )
    fs = run_text(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(data_dir)])
    commit = run_text(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"])
    dirty = run_text(
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--",
            ".",
            ":!bench",
            ":!docs/BENCHMARKS.md",
        ]
    )
    return {
        "origin commit": commit[:90] + (" (+ uncommitted changes)" if dirty else ""),
        "nproc": run_text(["nproc"]),
        "cpu": (model.group(1).strip() if model else "?")
        + (f" ({float(mhz.group(1)):.0f} MHz)" if mhz else ""),
        "ram": f"{int(mem.group(1)) / (1 << 20):.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "os": run_text(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "nginx": run_text([args.nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": run_text([args.wrk, "-v"]).splitlines()[0].split(" Copyright")[0],
        "python (origin)": run_text([str(venv_python), "-V"]),
        "aiohttp (origin)": aiohttp_version,
        "data dir file system": " ".join(fs.split()[0:2]) if fs else "?",
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Sizes:
    small: int = 4 * KiB
    medium: int = 1 * MiB
    large: int = 64 * MiB


def bench(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    data_dir = work / "data"
    logs = work / "logs"
    data_dir.mkdir(parents=True)
    logs.mkdir()
    wrk_log = logs / "wrk.log"
    token = "bench_" + secrets.token_hex(24)
    sizes = Sizes()

    log("making random blobs")
    get_blobs: list[tuple[int, int, str, bytes]] = []  # size, connections, digest, data
    conns = {sizes.small: args.connections, sizes.medium: args.connections}
    conns[sizes.large] = args.large_connections
    for size in (sizes.small, sizes.medium, sizes.large):
        data = os.urandom(size)
        get_blobs.append((size, conns[size], blake3_hex(data), data))
    put_base = os.urandom(sizes.large)
    put_file = work / "put-64MiB.bin"  # the bytes wrk PUTs and dd copies
    put_file.write_bytes(put_base)
    put_digest = blake3_hex(put_base)

    servers: list[Server] = []
    rows: list[Row] = []
    try:
        origin = start_origin(args, data_dir, logs, token)
        servers.append(origin)
        for size, _, digest, data in get_blobs:
            put_blob(origin.url, token, digest, data)
            on_disk = shard_path(data_dir, digest)
            if not on_disk.is_file() or on_disk.stat().st_size != size:
                raise BenchError(f"the origin did not store {digest} at {on_disk}")
        put_blob(origin.url, token, put_digest, put_base)
        machine = machine_info(args, data_dir)
        nginx = start_nginx(args, data_dir, work / "nginx")
        servers.append(nginx)
        # --tiers: the same data served by origins whose nearest tier is Redis, or the disk.
        tier_origins: list[tuple[str, Server]] = []
        if args.tiers:
            redis = start_redis(args, work / "redis")
            servers.append(redis)
            no_memory = {"ORIGIN_MEMORY_CACHE_SIZE": "0"}
            for label, env in (("Redis", {**no_memory, "ORIGIN_REDIS_URL": redis.url}),
                               ("disk", no_memory)):  # fmt: skip
                extra = start_origin(args, data_dir, logs, token, f"origin-{label.lower()}", env)
                servers.append(extra)
                tier_origins.append((label, extra))

        # Both serve the same bytes at the same URL; check that, and warm the page cache.
        for size, _, digest, data in get_blobs:
            for server in (origin, nginx, *(o for _, o in tier_origins)):
                status, _, got = http_request(server.url, "GET", f"/blobs/{digest}")
                if status != 200 or got != data:
                    raise BenchError(
                        f"{server.name}: GET /blobs/{digest} -> {status}, {len(got)} bytes"
                        f" (expected 200, {size})"
                    )

        cases: list[tuple[str, int, int, str]] = []  # test, size, connections, client
        for size, nconn, _, _ in get_blobs:
            cases.append((f"GET {human_size(size)} (wrk)", size, nconn, "wrk"))
        if args.py_get:
            cases.append((f"GET {human_size(sizes.large)} (py client)", sizes.large, 0, "py"))
        digests = {size: digest for size, _, digest, _ in get_blobs}
        for test, size, nconn, client in cases:
            nconn = nconn or args.large_connections
            row = Row(test=test, connections=nconn)
            threshold = 0.0
            if size == sizes.large:
                row.target, threshold = f">= {TARGET_GET_64M:.0%} of nginx", TARGET_GET_64M
            elif size == sizes.medium:
                row.target, threshold = f">= {TARGET_GET_1M:.0%} of nginx", TARGET_GET_1M
            elif size == sizes.small:
                row.target, threshold = f">= {TARGET_GET_4K:.0%} of nginx", TARGET_GET_4K
            # Memory and Redis take small blobs only: the tier rows are for 4 KiB and 1 MiB.
            tiers = tier_origins if size < sizes.large and client == "wrk" else []
            if tiers:
                row.test += ", memory tier"
            tier_rows = [
                (Row(test=f"{test}, {label} tier", connections=nconn, nginx_runs=row.nginx_runs),
                 server)
                for label, server in tiers
            ]  # fmt: skip
            contenders = [origin, *(server for _, server in tiers), nginx]
            for rnd in range(args.rounds):
                shift = rnd % len(contenders)  # who goes first rotates from round to round
                for server in contenders[shift:] + contenders[:shift]:
                    path = f"/blobs/{digests[size]}"
                    one = partial(get_once, args, server, path, client, nconn, size, wrk_log)
                    run = measure(args, f"{test} {server.name}", one)
                    if server is origin:
                        row.origin_runs.append(run)
                    elif server is nginx:
                        row.nginx_runs.append(run)
                    else:
                        next(r for r, s in tier_rows if s is server).origin_runs.append(run)
                    log(
                        f"{test} round {rnd + 1} {server.name}: {run.rps:,.1f} req/s,"
                        f" {run.mibs:,.0f} MiB/s, CPU server {run.server_cpu_pct:.0f}%"
                        f" client {run.client_cpu_pct:.0f}%"
                    )
            for r in (row, *(r for r, _ in tier_rows)):
                r.origin, r.nginx = median_run(r.origin_runs), median_run(r.nginx_runs)
            if threshold and row.ratio is not None:
                row.met = row.ratio >= threshold
            rows += [row, *(r for r, _ in tier_rows)]
        # Which tier answered: each origin's own count, so a row is what its name says.
        for server in (origin, *(o for _, o in tier_origins)):
            hits = tier_hits(server)
            machine[f"hits by tier, {server.name}"] = (
                ", ".join(f"{t} {n:,.0f}" for t, n in sorted(hits.items())) or "none"
            )

        # PUT, same body again and again: after the first, the blob exists (200).
        row = Row(test="PUT 64 MiB, same body (wrk)", connections=args.put_connections)
        row.note = "blob exists: the origin reads and discards the body, answers 200"
        env = {"BENCH_PUT_FILE": str(put_file), "BENCH_PUT_TOKEN": token}
        put_url = f"{origin.url}/blobs/{put_digest}"
        for _ in range(args.rounds):
            run = measure(
                args,
                row.test,
                lambda: run_wrk(
                    args,
                    origin,
                    put_url,
                    LUA_DIR / "put.lua",
                    args.put_connections,
                    args.put_duration,
                    sizes.large,
                    wrk_log,
                    env,
                ),
            )
            row.origin_runs.append(run)
            log(f"{row.test}: {run.rps:,.1f} req/s, {run.mibs:,.0f} MiB/s")
        row.origin = median_run(row.origin_runs)
        rows.append(row)

        # PUT of new blobs: hash + write + fsync + link each time.
        for nstreams in (1, 2):
            row = Row(
                test=f"PUT 64 MiB new blobs, {nstreams} stream{'s' if nstreams > 1 else ''}",
                connections=nstreams,
                target=f">= {TARGET_PUT_MIBS:.0f} MiB/s",
            )
            for rnd in range(args.rounds):

                def put_once(nstreams: int = nstreams) -> Run:
                    # Fresh blobs for every attempt: each PUT must create a new blob.
                    blobs = distinct_blobs(put_base, args.put_count, secrets.token_hex(4))
                    streams = [blobs[i::nstreams] for i in range(nstreams)]
                    run, _ = put_streams(origin, token, streams)
                    for digest, blob in blobs:
                        on_disk = shard_path(data_dir, digest)
                        if on_disk.stat().st_size != len(blob):
                            raise BenchError(f"{on_disk} has the wrong size after PUT")
                    return run

                run = measure(args, row.test, put_once)
                row.origin_runs.append(run)
                log(
                    f"{row.test} round {rnd + 1}: {run.mibs:,.0f} MiB/s"
                    f" ({run.requests} x 64 MiB in {run.duration_s:.2f} s,"
                    f" server CPU {run.server_cpu_pct:.0f}%)"
                )
            row.origin = median_run(row.origin_runs)
            row.met = row.origin.mibs >= TARGET_PUT_MIBS
            rows.append(row)

        # The disk itself, on the data directory's file system, with the same 64 MiB.
        for direct in (False, True):
            name = "dd 64 MiB bs=1M conv=fsync" + (" oflag=direct" if direct else "")
            wait_quiet(args, name)
            speeds = [run_dd(put_file, data_dir, direct, logs / "dd.log") for _ in range(3)]
            log(f"{name}: {', '.join(f'{s:,.0f}' for s in speeds)} MiB/s")
            spread = f"{min(speeds):,.0f}-{max(speeds):,.0f}"
            rows.append(Row(test=name, extra_mibs=statistics.median(speeds), note=spread))
    except BaseException:
        for server in servers:
            tail = server.log_tail(15)
            if tail:
                log(f"last lines of {server.name}'s log:\n{tail}")
        raise
    finally:
        for server in reversed(servers):
            server.stop(signal.SIGQUIT if server.name == "nginx" else signal.SIGTERM)
    return rows, machine


def markdown_report(
    rows: list[Row], machine: dict[str, str], args: argparse.Namespace, command: str
) -> str:
    lines = [
        f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; medians of {args.rounds} round(s),"
        f" {args.duration:g} s per wrk run (PUT: {args.put_duration:g} s),"
        f" wrk -t{args.threads}, origin and nginx with {args.workers} workers each.",
        "",
        "```",
        command,
        "```",
        "",
        render_markdown(rows),
        "",
        "Machine:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--origin", type=Path, default=DEFAULT_ORIGIN, help="the origin executable")
    p.add_argument("--nginx", default="nginx", help="the nginx executable")
    p.add_argument("--wrk", default="wrk", help="the wrk executable")
    p.add_argument("--redis", default="redis-server", help="the redis-server executable")
    p.add_argument(
        "--tiers",
        action="store_true",
        help="also GET 4 KiB and 1 MiB from origins whose nearest tier is Redis, or the disk",
    )
    p.add_argument("--workers", type=int, default=2, help="origin --workers = nginx workers")
    p.add_argument("--duration", type=float, default=6, help="seconds per measured GET run")
    p.add_argument("--put-duration", type=float, default=6, help="seconds per wrk PUT run")
    p.add_argument("--rounds", type=int, default=3, help="rounds per test; medians reported")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (<= cores)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections, 4 KiB, 1 MiB")
    p.add_argument("--large-connections", type=int, default=4, help="wrk connections, 64 MiB")
    p.add_argument("--put-connections", type=int, default=2, help="wrk connections, PUT")
    p.add_argument("--put-count", type=int, default=6, help="new 64 MiB blobs per PUT round")
    p.add_argument(
        "--no-py-get",
        dest="py_get",
        action="store_false",
        help="skip the second 64 MiB GET client (Python, large reads)",
    )
    p.add_argument(
        "--recv-size", type=int, default=1 * MiB, help="bytes per recv of the Python GET client"
    )
    p.add_argument(
        "--quiet-idle",
        type=float,
        default=80,
        help="before each run, wait until the machine is this %% idle (other load skews results)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=60, help="seconds to wait for that; 0: do not wait"
    )
    p.add_argument(
        "--max-other",
        type=float,
        default=30,
        help="CPU%% of other load during a run above which it is measured again",
    )
    p.add_argument("--retries", type=int, default=2, help="how often a run is measured again")
    p.add_argument("--start-timeout", type=float, default=60, help="seconds for a server to start")
    p.add_argument(
        "--origin-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the origin, e.g. ORIGIN_DIRECT_IO=false",
    )
    p.add_argument("--work-dir", type=Path, help="parent of the temp dir (data, logs, configs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown here")
    p.add_argument("--json", type=Path, help="also write every run as JSON here")
    args = p.parse_args(argv)
    for tool in (args.wrk, args.nginx, "dd", *([args.redis] if args.tiers else [])):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (apt-get install wrk nginx-light)")
    if not Path(args.origin).exists():
        p.error(f"{args.origin} not found (scripts/bootstrap.sh makes the venv)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "bench/blob_bench.py", *sys.argv[1:]])

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through bench()'s finally: servers stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    work = Path(tempfile.mkdtemp(prefix="blob-bench-", dir=args.work_dir))
    started = time.monotonic()
    try:
        rows, machine = bench(args, work)
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render_text(rows))
    print()
    for key, value in machine.items():
        print(f"{key}: {value}")
    print(f"total time: {time.monotonic() - started:.0f} s")
    if args.markdown:
        args.markdown.write_text(markdown_report(rows, machine, args, command))
        log(f"wrote {args.markdown}")
    if args.json:
        doc = [
            {
                "test": r.test,
                "target": r.target,
                "met": r.met,
                "dd_mibs": r.extra_mibs,
                "origin": [asdict(x) | {"mibs": x.mibs, "rps": x.rps} for x in r.origin_runs],
                "nginx": [asdict(x) | {"mibs": x.mibs, "rps": x.rps} for x in r.nginx_runs],
            }
            for r in rows
        ]
        args.json.write_text(json.dumps({"machine": machine, "rows": doc}, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
