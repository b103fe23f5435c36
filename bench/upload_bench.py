#!/usr/bin/env python3
"""``origin upload`` into an origin whose durable store is SFTP, beside ``sftp -b``, in one run.

What it does (bench/README.md says how to run it, docs/BENCHMARKS.md has the results):

1. Generates a seeded tree of N files (default 2,000) with sizes log-uniform between
   ``--min-size`` and ``--max-size`` (default 1 KiB .. 64 MiB): slices of one random buffer,
   each behind a unique header, so every file is distinct.
2. Starts a private OpenSSH sshd (tests/sshd_server.py, log level DEBUG1 so that it logs the
   cipher of every connection) and ``origin serve --workers W`` configured with ``sftp_url``,
   ``sftp_key`` and ``sftp_known_hosts`` pointing at it: the SFTP server is the durable store.
3. Puts the tree with ``sftp -b`` (a batch of ``-mkdir`` and ``put`` lines, the same key and
   known_hosts, the cipher given by ``--cipher``) once per ``--sftp-variant``; checks every
   remote file's size; ``sync``; removes the copy.
4. ``origin upload -j J`` of the tree (cold hash cache in a private XDG_CACHE_HOME), checks
   that the store holds exactly the tree's blobs, ``sync``; then the same command again with
   nothing changed. With ``--disk-origin``, the same once more into an origin whose durable
   store is its own disk (no SFTP): what the HTTP hop costs without the SFTP leg.
5. Prints a table (wall time, MiB/s, files/s, CPU of origin, sshd and client, the cipher the
   sshd log shows), optionally Markdown and JSON, and removes everything it made.

With ``--rtt MS`` both ``sftp -b`` and ``origin upload`` reach their server through
bench/wan_link.py, a link with that round trip (the origin's own SFTP leg stays direct): an
asset library uploaded from a studio to a data centre.

Before every timed run the tree is read once (so it is in the page cache for every contender)
and the machine is given a bounded wait to become idle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # tests.sshd_server, the suite's private sshd

from wan_link import spawned  # noqa: E402  (this directory is sys.path[0] when run)

from tests.sshd_server import SshdServer  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
HEADER = 64  # bytes of unique header at the start of every file
DEFAULT_ORIGIN = REPO / ".venv" / "bin" / "origin"
TOKEN = "upload-bench-admin-token-" + "x" * 16


def log(message: str) -> None:
    print(f"[upload-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_text(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (out.stdout or out.stderr).strip() or "?"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1KiB, 64MiB)")
    return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[m.group(2).upper()]


# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeFile:
    rel: str
    size: int


def plan_tree(files: int, min_size: int, max_size: int, seed: int) -> list[TreeFile]:
    """Sizes log-uniform in [min_size, max_size]; 20 x 5 directories, two levels deep."""
    rng = random.Random(seed)
    lo, hi = math.log(min_size), math.log(max_size)
    plan = []
    for i in range(files):
        size = min(max_size, max(min_size, int(math.exp(rng.uniform(lo, hi)))))
        plan.append(TreeFile(f"lib{i % 20:02d}/set{i // 20 % 5}/asset{i:05d}.glb", size))
    return plan


def write_tree(root: Path, plan: list[TreeFile], seed: int) -> None:
    rng = random.Random(seed + 1)
    pool = rng.randbytes(max(f.size for f in plan))
    view = memoryview(pool)
    for i, f in enumerate(plan):
        path = root / f.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"upload-bench seed={seed} file={i:05d}".encode().ljust(HEADER, b"\n")
        body_len = f.size - len(header)
        start = rng.randrange(0, len(pool) - body_len + 1)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header[: f.size])
            if body_len > 0:
                written = 0
                while written < body_len:
                    written += os.write(fd, view[start + written : start + body_len])
        finally:
            os.close(fd)


def read_tree(root: Path, plan: list[TreeFile]) -> float:
    """Read every file once (page cache warm for whoever goes next); returns seconds."""
    t0 = time.monotonic()
    buf = bytearray(4 * MiB)
    for f in plan:
        with open(root / f.rel, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.monotonic() - t0


# -- measuring --------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and the descendants it has reaped."""
    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / tck, sum(fields[:8]) / tck


def wait_quiet(idle_pct: float, wait: float, what: str) -> None:
    deadline = time.monotonic() + wait
    while True:
        b0, t0 = machine_busy()
        time.sleep(0.5)
        b1, t1 = machine_busy()
        idle = 100 - 100 * (b1 - b0) / max(t1 - t0, 1e-9)
        if idle >= idle_pct:
            return
        if time.monotonic() > deadline:
            log(f"WARNING: machine still busy (idle {idle:.0f}%); measuring {what} anyway")
            return
        time.sleep(1)


@dataclass
class Result:
    name: str
    command: str
    files: int
    bytes: int
    seconds: float
    sync_seconds: float
    origin_cpu: float
    sshd_cpu: float
    client_cpu: float
    machine_busy_cpu: float
    ciphers: list[str] = field(default_factory=list)
    key_exchanges: int = 0
    jobs: int = 1
    note: str = ""
    round: int = 1
    contender: str = ""  # the name without the round
    rerun: bool = False  # a re-run with nothing changed: timed, but not a transfer rate

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.seconds

    @property
    def files_s(self) -> float:
        return self.files / self.seconds

    def pct(self, cpu: float) -> float:
        return 100 * cpu / self.seconds

    def ms_per_mib(self, cpu: float) -> float:
        """CPU milliseconds per MiB moved: what the 2 shared cores pay for each byte."""
        return 1000 * cpu / (self.bytes / MiB)

    def row(self) -> dict[str, Any]:
        return {
            "origin_ms_per_mib": round(self.ms_per_mib(self.origin_cpu), 2),
            "sshd_ms_per_mib": round(self.ms_per_mib(self.sshd_cpu), 2),
            "client_ms_per_mib": round(self.ms_per_mib(self.client_cpu), 2),
            **asdict(self),
            "mib_s": round(self.mib_s, 1),
            "files_s": round(self.files_s, 1),
            "origin_cpu_pct": round(self.pct(self.origin_cpu)),
            "sshd_cpu_pct": round(self.pct(self.sshd_cpu)),
            "client_cpu_pct": round(self.pct(self.client_cpu)),
            "other_cpu_pct": round(
                self.pct(self.machine_busy_cpu - self.origin_cpu - self.sshd_cpu - self.client_cpu)
            ),
        }


class SshdLog:
    """The ciphers of the key exchanges that the sshd log shows since the last call.

    One per new connection and one per rekey: asyncssh rekeys every GiB by default, OpenSSH
    with AES-GCM only after 4 G blocks (64 GiB)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> tuple[list[str], int]:
        text = self.path.read_text(errors="replace")[self.offset :]
        self.offset += len(text)
        ciphers = re.findall(r"kex: client->server cipher: (\S+)", text)
        return sorted(set(ciphers)), len(ciphers)


def timed(
    name: str,
    cmd: list[str],
    *,
    env: dict[str, str],
    out: Path,
    origin_pid: int,
    sshd_pid: int,
    sshd_log: SshdLog,
    files: int,
    nbytes: int,
    jobs: int,
) -> Result:
    sshd_log.take()
    o0, s0, c0, (m0, _) = tree_cpu(origin_pid), tree_cpu(sshd_pid), children_cpu(), machine_busy()
    t0 = time.monotonic()
    with open(out, "ab") as f:
        f.write(f"$ {shlex.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - t0
    o1, s1, c1, (m1, _) = tree_cpu(origin_pid), tree_cpu(sshd_pid), children_cpu(), machine_busy()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({proc.returncode}); see {out}:\n{out.read_text()[-3000:]}"
        )
    t1 = time.monotonic()
    os.sync()  # what the run left in the page cache is written before anything else runs
    sync_seconds = time.monotonic() - t1
    ciphers, key_exchanges = sshd_log.take()
    return Result(
        name, shlex.join(cmd), files, nbytes, seconds, sync_seconds,
        o1 - o0, s1 - s0, c1 - c0, m1 - m0, ciphers, key_exchanges, jobs,
    )  # fmt: skip


# -- the contenders ---------------------------------------------------------------------------


def sftp_batch(tree: Path, plan: list[TreeFile], remote: Path, fsync: bool = False) -> str:
    """``fsync``: ``put -f``, which asks the server to fsync each file (fsync@openssh.com), as
    the origin does before it answers a PUT; plain ``put`` leaves the bytes in the page cache."""
    lines = [f"-mkdir {remote}"]
    dirs = sorted({str(Path(f.rel).parent) for f in plan})
    seen: set[str] = set()
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in seen:
                seen.add(sub)
                lines.append(f"-mkdir {remote / sub}")
    put = "put -f" if fsync else "put"
    lines += [f"{put} {tree / f.rel} {remote / f.rel}" for f in plan]
    return "\n".join(lines) + "\n"


def sftp_cmd(
    sshd: SshdServer, port: int, batch: Path, cipher: str, extra: Sequence[str]
) -> list[str]:
    """``port``: sshd's, or that of a link in front of it (the host key is still sshd's)."""
    return [
        "sftp", "-F", "/dev/null", "-b", str(batch), "-i", str(sshd.client_key),
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
        "-o", f"HostKeyAlias=[127.0.0.1]:{sshd.port}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        *(["-o", f"Ciphers={cipher}"] if cipher != "default" else []),
        "-P", str(port), *extra, f"{sshd.user}@127.0.0.1",
    ]  # fmt: skip


@contextlib.contextmanager
def link_to(port: int, args: argparse.Namespace, log_path: Path) -> Iterator[int]:
    """The port a client should use for ``port``: itself, or with ``--rtt`` that of a
    bench/wan_link.py in front of it, whose CPU counts as "other" in the table."""
    if not args.rtt:
        yield port
        return
    with open(log_path, "ab") as errors, spawned(port, args.rtt / 2, args.rtt_window, errors) as p:
        yield p


def check_copy(tree: Path, plan: list[TreeFile], remote: Path) -> None:
    bad = [f.rel for f in plan if (remote / f.rel).stat().st_size != f.size]
    if bad:
        raise RuntimeError(f"sftp copy differs in size: {bad[:5]}")


class Origin:
    def __init__(self, exe: Path, data: Path, env: dict[str, str], workers: int, log: Path):
        self.log = log
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--data-dir", str(data), "--host", "127.0.0.1", "--port", "0",
                 "--workers", str(workers)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(
                r"listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace")
            )
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"origin did not start:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def check_store(store: Path, tree: Path, plan: list[TreeFile], manifest: Path) -> int:
    doc = json.loads(manifest.read_text())
    # The manifest names each file as reached from what was named on the command line.
    if set(doc) != {str(tree / f.rel) for f in plan}:
        raise RuntimeError("manifest does not list exactly the tree")
    digests = {v["digest"]: v["size"] for v in doc.values()}
    held = {p.name: p.stat().st_size for p in (store / "blobs").rglob("*") if p.is_file()}
    if held != digests:
        raise RuntimeError(f"store holds {len(held)} blobs, the tree has {len(digests)}")
    if any((store / "tmp").iterdir()):
        raise RuntimeError("temp files left in the store's tmp/")
    return len(digests)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run(args: argparse.Namespace, work: Path) -> Bench:
    bench = Bench(args, work)
    plan = plan_tree(args.files, args.min_size, args.max_size, args.seed)
    total = sum(f.size for f in plan)
    tree = work / "tree"
    log(f"tree: {len(plan)} files, {total / GiB:.2f} GiB, {args.min_size}..{args.max_size} B")
    t0 = time.monotonic()
    write_tree(tree, plan, args.seed)
    os.sync()
    log(f"tree written in {time.monotonic() - t0:.0f}s")

    sshd = SshdServer(work / "sshd")
    # DEBUG1 logs each connection's negotiated cipher and nothing per SFTP request.
    sshd.config.write_text(sshd.config.read_text().replace("LogLevel VERBOSE", "LogLevel DEBUG1"))
    sshd.start()
    assert sshd.proc is not None
    sshd_log = SshdLog(sshd.log)
    try:
        for rnd in range(1, args.rounds + 1):
            run_round(bench, plan, sshd, sshd_log, rnd)
    finally:
        sshd.stop()
    return bench


def run_round(
    bench: Bench, plan: list[TreeFile], sshd: SshdServer, sshd_log: SshdLog, rnd: int
) -> None:
    """Every contender once: with ``--rounds`` they take turns, so a machine that drifts
    during the run (docs/BENCHMARKS.md: 20 % and more) shifts all of them alike."""
    args, work = bench.args, bench.work
    assert sshd.proc is not None
    tree, total = work / "tree", sum(f.size for f in plan)
    out = work / "commands.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGIN_")}
    suffix = f" (round {rnd})" if args.rounds > 1 else ""
    variants = [(v, False) for v in args.sftp_variant]
    variants += [(v, True) for v in args.sftp_fsync_variant]
    for i, (variant, fsync) in enumerate(variants):
        remote = sshd.root / f"sftp-b-{i}"
        batch = work / f"batch-{i}.txt"
        batch.write_text(sftp_batch(tree, plan, remote, fsync))
        extra = shlex.split(variant)
        contender = f"sftp -b {variant}".strip() + (", put -f (fsync each file)" if fsync else "")
        name = contender + suffix
        wait_quiet(args.quiet_idle, args.quiet_wait, name)
        warm = read_tree(tree, plan)
        log(f"{name} (tree read in {warm:.1f}s)")
        with link_to(sshd.port, args, work / "wan_link.log") as port:
            result = timed(
                name, sftp_cmd(sshd, port, batch, args.cipher, extra),
                env=env, out=out, origin_pid=0, sshd_pid=sshd.proc.pid, sshd_log=sshd_log,
                files=len(plan), nbytes=total, jobs=1,
            )  # fmt: skip
        check_copy(tree, plan, remote)
        shutil.rmtree(remote)
        os.sync()
        log(f"  {result.seconds:.1f}s, {result.mib_s:.1f} MiB/s, {result.ciphers}")
        result.round, result.contender = rnd, contender
        bench.results.append(result)

    for jobs in args.jobs:
        store = sshd.root / f"origin-j{jobs}"
        sftp_env = sshd.origin_env(store)
        origin_run(bench, plan, sshd, sshd_log, f"j{jobs}-r{rnd}", jobs, sftp_env, store, rnd)
    if args.disk_origin:
        # The same upload with the SFTP leg taken away: what the HTTP hop and the
        # origin's verification cost by themselves (docs/BENCHMARKS.md, eighth session).
        jobs = args.jobs[0]
        origin_run(
            bench, plan, sshd, sshd_log, f"disk-j{jobs}-r{rnd}", jobs, {}, None, rnd,
            "disk store",
        )  # fmt: skip


def origin_run(
    bench: Bench,
    plan: list[TreeFile],
    sshd: SshdServer,
    sshd_log: SshdLog,
    name: str,
    jobs: int,
    store_env: dict[str, str],
    store: Path | None,
    rnd: int = 1,
    store_label: str = "",
) -> None:
    """``origin upload -j jobs`` of the tree, cold, then again with nothing changed.

    ``store_env`` configures the origin's durable store (empty: its own disk), ``store`` is
    where that store keeps ``blobs/`` (None: the origin's data dir, its disk store).
    """
    args, work = bench.args, bench.work
    assert sshd.proc is not None
    tree, total = work / "tree", sum(f.size for f in plan)
    out = work / "commands.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGIN_")}
    data = work / f"node-{name}"
    store = store or data
    xdg = work / f"xdg-{name}"
    origin_env = {
        **env,
        "ORIGIN_ADMIN_TOKEN": TOKEN,
        **store_env,
        **dict(kv.split("=", 1) for kv in args.origin_env),
    }
    label = f"origin upload -j {jobs}" + (f", {store_label}" if store_label else "")
    suffix = f" (round {rnd})" if args.rounds > 1 else ""
    where = store_label or "the SFTP store"
    # Its own log per origin: Origin finds its URL by the first "listening on" in it.
    origin = Origin(Path(args.origin), data, origin_env, args.workers, work / f"origin-{name}.log")
    with contextlib.ExitStack() as stack:
        stack.callback(origin.stop)
        link = link_to(int(origin.url.rsplit(":", 1)[1]), args, work / "wan_link.log")
        url = f"http://127.0.0.1:{stack.enter_context(link)}"
        hash_cache = xdg / "origin" / "upload-hashes.json"
        assert not hash_cache.exists()  # the first run is cold
        manifest = work / f"manifest-{name}.json"
        cmd = [args.origin, "upload", "--url", url, "-j", str(jobs),
               "--no-progress", "--manifest", str(manifest), str(tree)]  # fmt: skip
        up_env = {**env, "ORIGIN_TOKEN": TOKEN, "XDG_CACHE_HOME": str(xdg)}
        wait_quiet(args.quiet_idle, args.quiet_wait, label)
        warm = read_tree(tree, plan)
        log(f"{label} (tree read in {warm:.1f}s)")
        first = timed(
            label + suffix, cmd, env=up_env, out=out,
            origin_pid=origin.proc.pid, sshd_pid=sshd.proc.pid, sshd_log=sshd_log,
            files=len(plan), nbytes=total, jobs=jobs,
        )  # fmt: skip
        blobs = check_store(store, tree, plan, manifest)
        if not hash_cache.is_file():
            raise RuntimeError(f"no hash cache at {hash_cache}")
        first.note = f"{blobs} blobs on {where}, exactly the tree"
        first.round, first.contender = rnd, label
        log(f"  {first.seconds:.1f}s, {first.mib_s:.1f} MiB/s, {first.ciphers}")
        bench.results.append(first)
        wait_quiet(args.quiet_idle, args.quiet_wait, "origin upload re-run")
        again = timed(
            f"{label}, re-run, nothing changed{suffix}", cmd, env=up_env,
            out=out, origin_pid=origin.proc.pid, sshd_pid=sshd.proc.pid,
            sshd_log=sshd_log, files=len(plan), nbytes=total, jobs=jobs,
        )  # fmt: skip
        tail = out.read_text().rstrip().rsplit("\n", 1)[-1]
        if f"{len(plan)} files: 0 uploaded" not in tail:
            raise RuntimeError(f"the re-run uploaded something: {tail}")
        again.note = (
            f"{100 * again.seconds / first.seconds:.1f} % of the first run; uploaded 0 bytes"
        )
        log(f"  re-run {again.seconds:.2f}s ({again.note})")
        again.round, again.contender, again.rerun = rnd, f"{label}, re-run", True
        bench.results.append(again)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


# -- the report -------------------------------------------------------------------------------


def machine(args: argparse.Namespace) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    # The origin's code is that of the checkout (or bench/origin_at.sh worktree) it lives in;
    # both run this interpreter's libraries.
    origin_code = Path(args.origin).resolve().parent
    versions = run_text([sys.executable, "-c", "import asyncssh, aiohttp, cryptography, sys; "
                         "print(sys.version.split()[0], asyncssh.__version__, "
                         "aiohttp.__version__, cryptography.__version__)"]).split()  # fmt: skip
    versions += ["?"] * (4 - len(versions))
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1) if model else "?",
        "aes_ni": "yes" if re.search(r"^flags\s*:.*\baes\b", cpuinfo, re.MULTILINE) else "no",
        "ram": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "openssh": run_text(["ssh", "-V"]),
        "python": versions[0],
        "asyncssh": versions[1],
        "aiohttp": versions[2],
        "cryptography": versions[3],
        "filesystem": run_text(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", tempfile.gettempdir()]
        ),
        "commit": run_text(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"]),
        "origin code": run_text(["git", "-C", str(origin_code), "log", "-1", "--format=%h %s"]),
    }


def table(bench: Bench) -> str:
    head = (
        "| run | jobs | wall s | MiB/s | files/s | origin CPU% | sshd CPU% | client CPU% "
        "| other CPU% | CPU ms/MiB origin+sshd+client | sync after, s | cipher (key exchanges) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in bench.results:
        row = r.row()
        lines.append(
            f"| {r.name} | {r.jobs} | {r.seconds:.2f} | {r.mib_s:.1f} | {r.files_s:.1f} "
            f"| {row['origin_cpu_pct']} | {row['sshd_cpu_pct']} | {row['client_cpu_pct']} "
            f"| {row['other_cpu_pct']} | {row['origin_ms_per_mib']:.2f}"
            f"+{row['sshd_ms_per_mib']:.2f}+{row['client_ms_per_mib']:.2f} | {r.sync_seconds:.1f} "
            f"| {', '.join(r.ciphers) or '-'} ({r.key_exchanges}) |"
        )
    return "\n".join(lines)


def rounds_summary(bench: Bench) -> list[str]:
    """Each contender's median over the rounds, and its ratio to plain ``sftp -b`` round by
    round (the two ran minutes apart, not sessions apart)."""
    timed_runs = [r for r in bench.results if not r.rerun]
    baseline = {r.round: r.mib_s for r in timed_runs if r.contender == "sftp -b"}
    lines = []
    for contender in dict.fromkeys(r.contender for r in timed_runs):
        mine = [r for r in timed_runs if r.contender == contender]
        rates = ", ".join(f"{r.mib_s:.1f}" for r in mine)
        line = (
            f"- {contender}: median {statistics.median(r.mib_s for r in mine):.1f} MiB/s ({rates})"
        )
        if contender != "sftp -b" and baseline:
            ratios = [r.mib_s / baseline[r.round] for r in mine if r.round in baseline]
            line += "; of sftp -b in the same round: " + ", ".join(f"{x:.0%}" for x in ratios)
            line += f", median {statistics.median(ratios):.0%}"
        lines.append(line)
    return lines


def report(bench: Bench, info: dict[str, str]) -> str:
    a = bench.args
    total = sum(f.size for f in plan_tree(a.files, a.min_size, a.max_size, a.seed))
    parts = [
        f"Tree: {a.files} files, sizes log-uniform {a.min_size} B .. {a.max_size} B "
        f"(seed {a.seed}), {total / GiB:.2f} GiB. origin serve --workers {a.workers}."
        + (
            f" sftp -b and origin upload through bench/wan_link.py: RTT {a.rtt:g} ms, "
            f"window {a.rtt_window // KiB} KiB; the origin's SFTP leg direct."
            if a.rtt
            else ""
        ),
        "",
        table(bench),
        "",
        *(f"- {r.name}: {r.note}" for r in bench.results if r.note),
        "",
        *([*rounds_summary(bench), ""] if a.rounds > 1 else []),
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--min-size", type=parse_size, default=KiB)
    p.add_argument("--max-size", type=parse_size, default=64 * MiB)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="every contender this many times, in turn")
    p.add_argument("--workers", type=int, default=2, help="origin serve --workers")
    p.add_argument("--jobs", type=int, action="append", help="origin upload -j (repeatable; 4)")
    p.add_argument(
        "--sftp-variant", action="append",
        help="extra sftp options, one run each (repeatable; default: '' and '-B 261120 -R 128')",
    )  # fmt: skip
    p.add_argument(
        "--sftp-fsync-variant", action="append",
        help="like --sftp-variant, with put -f: the server fsyncs each file (default: '')",
    )  # fmt: skip
    p.add_argument(
        "--disk-origin", action="store_true",
        help="also upload to an origin on its own disk store (no SFTP): the HTTP hop alone",
    )  # fmt: skip
    p.add_argument(
        "--rtt", type=float, default=0,
        help="ms: sftp -b and origin upload cross a link with this round trip (wan_link.py)",
    )  # fmt: skip
    p.add_argument(
        "--rtt-window", type=parse_size, default=4 * MiB,
        help="with --rtt: bytes in flight per connection and direction (a TCP window)",
    )  # fmt: skip
    p.add_argument("--cipher", default="aes128-gcm@openssh.com", help="sftp -o Ciphers=")
    p.add_argument("--origin", default=str(DEFAULT_ORIGIN), help="the origin executable")
    p.add_argument("--origin-env", action="append", default=[], help="KEY=VALUE for the origin")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the work dir goes")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--quiet-idle", type=float, default=80)
    p.add_argument("--quiet-wait", type=float, default=60)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.jobs = args.jobs or [4]
    if args.sftp_fsync_variant is None:
        args.sftp_fsync_variant = [""]
    args.sftp_variant = args.sftp_variant if args.sftp_variant is not None else [
        "", "-B 261120 -R 128"]  # fmt: skip
    need = sum(f.size for f in plan_tree(args.files, args.min_size, args.max_size, args.seed))
    free = shutil.disk_usage(args.tmp).free
    if free < 2.3 * need:  # the tree, one copy on the server, and headroom
        log(
            f"not enough space in {args.tmp}: {free / GiB:.1f} GiB free, "
            f"{2.3 * need / GiB:.1f} needed"
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=args.tmp))
    log(f"work dir {work}")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        bench = run(args, work)
        info = machine(args)
        text = report(bench, info)
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        if args.json:
            args.json.write_text(json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k not in ("markdown", "json")},
                 "machine": info, "results": [r.row() for r in bench.results]},
                indent=2, default=str,
            ) + "\n")  # fmt: skip
        return 0
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
