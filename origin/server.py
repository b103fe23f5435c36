"""``origin serve``: one process per worker, all listening on one port with SO_REUSEPORT.

The kernel spreads connections across the workers' sockets. The parent reserves the port (so
``--port 0`` picks one port for every worker), starts the workers, restarts one that dies
(after a growing back-off when it keeps dying), and on SIGTERM or SIGINT stops them all
gracefully (in-flight requests finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import queue
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from cache import TierHealth

from .app import create_app
from .appkeys import IN_FLIGHT
from .config import Config

log = logging.getLogger(__name__)

_READY_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1
# How often the supervisor looks at its workers (started, exited).
_POLL = 0.2
# A worker that dies sooner than this after it started is taken for a crash loop (its start
# fails, or it fails as soon as it serves): its replacement waits out a back-off, 0.5 s
# doubling up to 30 s. One that lived longer crashed once: replaced at once, back-off reset.
# Its lifetime, not its ready report, is the test: a worker that dies just after it is ready
# loops as fast as one that never is.
_STABLE_AFTER = 30.0


class StartFailed(Exception):
    """A worker's own start failed (the store's layout, the catalog, the tiers): what an
    operator fixes, not a bug in origin. The message is one line; the traceback is logged at
    debug level."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening socket in the SO_REUSEPORT group: holds the port, takes no load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _stop_budget(config: Config) -> tuple[float, float]:
    """At SIGTERM, ``shutdown_timeout`` in all: two thirds for the handlers under way to finish
    (an upload's body must still arrive, origin.inflight), then a third for aiohttp to write
    the answers handed to it (a download's body) and close."""
    close = config.shutdown_timeout / 3
    return config.shutdown_timeout - close, close


async def _run_worker(config: Config, port: int, on_ready: Callable[[], None]) -> None:
    app = create_app(config)
    drain_timeout, close_timeout = _stop_budget(config)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("origin.access") if config.access_log else None,
        shutdown_timeout=close_timeout,
        # Larger socket reads mean fewer, bigger chunks on the upload path.
        read_bufsize=1 << 20,
    )
    try:
        await runner.setup()  # the app's on_startup: the store, the catalog, the tiers
    except Exception as exc:
        log.debug("the start failed", exc_info=True)
        raise StartFailed(" ".join(f"{type(exc).__name__}: {exc}".split())) from exc
    # Not in the try: with one worker, a port taken meanwhile reaches origin.commands as the
    # OSError it names as such.
    site = web.TCPSite(runner, config.host, port, reuse_port=True, backlog=2048)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready()
    await stop.wait()
    # No new connections (the kernel gives them to the port's other sockets), then the
    # requests under way finish, uploads included, before aiohttp closes what is left
    # (origin.inflight says why it must not come first).
    await site.stop()
    in_flight = app[IN_FLIGHT]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_timeout):
            await in_flight.drain()
    if in_flight.count:
        log.warning("stopping with %d request(s) still under way", in_flight.count)
    await runner.cleanup()


def worker_main(config: Config, port: int, ready: Any) -> None:
    _die_with_parent()
    configure_logging(config)
    try:
        uvloop.run(_run_worker(config, port, lambda: ready.put(os.getpid())))
    except StartFailed as exc:
        # One line (the format names this pid), not multiprocessing's traceback: a crash loop
        # prints one per replacement. The supervisor logs the exit status next.
        log.error("cannot start: %s", exc)
        sys.exit(1)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot tie the worker's life to its supervisor on this platform")


def configure_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.log_level != "debug":
        # asyncssh says every connection's and channel's opening and closing at INFO, a dozen
        # lines for each of the SFTP pool's connections (and all of `origin verify`'s output
        # on stderr); the SFTP store says itself what matters (a lost connection, a failure).
        logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.root.level))


def prepare_metrics_dir(config: Config) -> None:
    """A fresh directory for prometheus-client's per-process files.

    Only for several workers: they are spawned, so they import prometheus-client after this
    variable is set, which is when it chooses its multiprocess mode. One worker serving in this
    process keeps the ordinary in-memory registry.

    One directory per server (``metrics/<pid>``): two servers on one data directory (a new one
    started before the old one stops, a benchmark) must not wipe each other's counters. Those
    of servers that are gone are removed.
    """
    root = config.data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and os.path.exists(f"/proc/{old.name}"):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def serve(config: Config, banner: list[str]) -> int:
    """Run until SIGTERM/SIGINT; prints the URL and ``banner`` once every worker listens.

    A start that fails before that prints ``banner`` all the same (on stdout, after a line
    saying the server did not start): on a first start it holds the admin token's secret,
    made before the workers start and stored only as a hash, so this is its one chance to be
    seen. The token stays valid and the next start makes no other (it says "created at first
    start"); deleting it on failure instead would need the catalog, which may be what failed.

    Exit status: 0 after a clean stop. 1 when the start failed (a worker's own start, with
    ``origin: cannot start: ...`` on stderr for one worker; the traceback at log_level debug),
    or when a worker did not stop within ``shutdown_timeout`` and was killed, or failed as it
    stopped: requests under way were cut off, and an orchestrator or operator should see that
    the stop was not clean.
    """
    announced = False

    def announce(port: int) -> None:
        nonlocal announced
        announced = True
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{port}"
        listening = f"origin listening on {url} ({config.workers} worker(s))"
        print(listening, *banner, sep="\n", flush=True)

    try:
        return _serve(config, announce)
    finally:
        if not announced:
            print("origin did not start (the errors are on stderr)", *banner, sep="\n", flush=True)


def _serve(config: Config, announce: Callable[[int], None]) -> int:
    if config.workers > 1:
        prepare_metrics_dir(config)
    with reserve_port(config.host, config.port) as reserved:
        port = reserved.getsockname()[1]
        if config.workers == 1:
            # One worker runs in this process: nothing to supervise, and a signal reaches it.
            try:
                uvloop.run(_run_worker(config, port, lambda: announce(port)))
            except StartFailed as exc:
                # As origin.commands says a start it refuses: one line (and exit 1, as a
                # worker's failed start is with several).
                print(f"origin: cannot start: {exc} (log_level debug logs the traceback)",
                      file=sys.stderr)  # fmt: skip
                return 1
            return 0
        return _supervise(config, port, announce)


def _supervise(config: Config, port: int, announce: Callable[[int], None]) -> int:
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.queues.Queue[int] = ctx.Queue()

    def spawn() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=worker_main, args=(config, port, ready), daemon=False)
        proc.start()
        return proc

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workers = [spawn() for _ in range(config.workers)]
    if not _wait_ready(workers, ready, lambda: stopping):
        _stop(workers, config.shutdown_timeout, set())
        return 1
    announce(port)

    started = [time.monotonic()] * len(workers)
    backoffs = [TierHealth(f"worker slot {i}") for i in range(len(workers))]
    dead: set[int] = set()  # slots whose worker exited, waiting out their back-off
    serving = {proc.pid for proc in workers if proc.pid is not None}  # have said they listen
    # Short sleeps whatever the back-offs: SIGTERM is seen within _POLL.
    while not stopping:
        serving |= _drain(ready)
        for i, proc in enumerate(workers):
            if stopping:
                break
            if i not in dead and not proc.is_alive():
                dead.add(i)
                lived = time.monotonic() - started[i]
                if lived < _STABLE_AFTER:
                    backoffs[i].failed(ChildProcessError(f"exit status {proc.exitcode}"))
                else:
                    backoffs[i].succeeded()
                log.error(
                    "worker %s exited with status %s after %.1f s; starting another in %.1f s",
                    proc.pid, proc.exitcode, lived, backoffs[i].report().retry_in,
                )  # fmt: skip
            if i in dead and backoffs[i].healthy:
                dead.discard(i)
                workers[i] = spawn()
                started[i] = time.monotonic()
        time.sleep(_POLL)
    serving |= _drain(ready)
    return 0 if _stop(workers, config.shutdown_timeout, serving) else 1


def _drain(ready: multiprocessing.queues.Queue[int]) -> set[int]:
    """The replacements that report they listen. Read as they come: unread, the queue's pipe
    would fill over many restarts, and a worker that put into a full pipe blocks at its exit."""
    pids: set[int] = set()
    with contextlib.suppress(queue.Empty):
        while True:
            pids.add(pid := ready.get_nowait())
            log.info("worker %s ready", pid)
    return pids


def _wait_ready(
    workers: list[multiprocessing.process.BaseProcess],
    ready: multiprocessing.queues.Queue[int],
    stopping: Callable[[], bool],
) -> bool:
    """True once every worker has said it listens; False (and why, logged) as soon as one
    exits first, at SIGTERM/SIGINT, or after _READY_TIMEOUT.

    A worker's own start can fail where the parent's preflight looked fine (the store's layout
    in the data directory, the catalog), and a dead worker never reports: hence short waits on
    the queue, each followed by a look at the processes.
    """
    waiting = {proc.pid for proc in workers}
    deadline = time.monotonic() + _READY_TIMEOUT
    while waiting:
        try:
            waiting.discard(ready.get(timeout=_POLL))
            continue
        except queue.Empty:
            pass
        for proc in workers:
            if proc.pid in waiting and not proc.is_alive():
                log.error(
                    "worker %s exited with status %s before it was ready; stopping the others",
                    proc.pid,
                    proc.exitcode,
                )
                return False
        if stopping():
            log.error("stopped before the workers were ready")
            return False
        if time.monotonic() > deadline:
            pending = [proc.pid for proc in workers if proc.pid in waiting]
            log.error("worker(s) %s not ready after %.0f s", pending, _READY_TIMEOUT)
            return False
    return True


def _stop(
    workers: list[multiprocessing.process.BaseProcess], timeout: float, serving: set[int]
) -> bool:
    """SIGTERM, then SIGKILL for what still runs after ``timeout`` (and 5 s): True when none
    had to be killed and none of those ``serving`` failed as it stopped. A worker still
    starting is not judged by its exit: SIGTERM ends it before it handles the signal, and a
    start that fails says so itself."""
    running = [proc for proc in workers if proc.is_alive()]
    for proc in running:
        proc.terminate()  # SIGTERM: the worker finishes in-flight requests, then exits
    # One deadline for all: they stop at the same time, so N hung workers cost one timeout,
    # not N of them.
    deadline = time.monotonic() + timeout + 5
    for proc in running:
        proc.join(max(0.0, deadline - time.monotonic()))
    hung = [proc for proc in running if proc.is_alive()]
    for proc in hung:
        log.error("worker %s did not stop in %.0f s; killing it", proc.pid, timeout)
        proc.kill()
        proc.join(5)
    failed = [p for p in running if p not in hung and p.pid in serving and p.exitcode != 0]
    for proc in failed:
        log.error("worker %s exited with status %s as it stopped", proc.pid, proc.exitcode)
    return not hung and not failed
