"""The ``origin`` command line: the parser, ``origin upload``, and the way to the server-side
commands (``serve``, ``db``, ``token``, ``recommender``) in ``origin.commands``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from .tokens import SCOPES
from .uploader import (
    KIND,
    Options,
    OriginUnusable,
    UsageError,
    check_url,
    collect,
    read_batch,
    read_text,
    upload,
)

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="origin", description=__doc__)
    parser.add_argument(
        "--config", type=Path, help="TOML configuration file (default: $ORIGIN_CONFIG)"
    )
    parser.add_argument("--data-dir", help="where blobs and tokens live (default: ./data)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the HTTP origin")
    serve_p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    serve_p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    # Also after ``serve`` (the documented form); SUPPRESS keeps a value given before it.
    serve_p.add_argument("--data-dir", default=argparse.SUPPRESS, help="as above")

    db_p = sub.add_parser("db", help="the catalog's schema")
    db_sub = db_p.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to this code's schema (and import tokens.json)")
    down = db_sub.add_parser("downgrade", help="migrate down, e.g. to -1 or a revision")
    down.add_argument("revision")
    db_sub.add_parser("current", help="print the schema revision of the database and the code")

    verify_p = sub.add_parser(
        "verify", help="hash every stored blob; report corrupt, missing and unrecorded ones"
    )
    verify_p.add_argument(
        "-j", "--jobs", type=_positive_int, default=os.cpu_count() or 1, help="blobs at once"
    )
    verify_p.add_argument(
        "--record", action="store_true", help="record unrecorded blobs in the catalog"
    )

    up = sub.add_parser("upload", help="upload files and trees, only what the origin lacks")
    up.add_argument("paths", nargs="*", help="files and directories")
    up.add_argument("--url", default=os.environ.get("ORIGIN_URL", "http://127.0.0.1:8080"))
    up.add_argument("--token", default=os.environ.get("ORIGIN_TOKEN"), help="or $ORIGIN_TOKEN")
    up.add_argument("-b", "--batch", type=Path, help="a file of 'put LOCAL [NAME]' lines")
    up.add_argument("--exclude", action="append", default=[], help="gitignore-style pattern")
    up.add_argument("--ignore-file", default=".originignore", help="read in each directory given")
    up.add_argument("-j", "--jobs", type=int, default=4, help="parallel upload streams")
    up.add_argument(
        "--small-jobs", type=int, help="parallel uploads of files up to 1 MiB (default: 4 x -j)"
    )
    up.add_argument("--retries", type=int, default=5, help="attempts per request")
    up.add_argument("--dry-run", action="store_true", help="say what would be uploaded")
    up.add_argument("--manifest", type=Path, help="write path -> digest, size, asset id (JSON)")
    up.add_argument("--register", action="store_true", help="create an asset for each file")
    up.add_argument("--kind", help="asset kind for --register (default: the parent folder)")
    up.add_argument("--no-hash-cache", action="store_true", help="rehash every file")
    up.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    token_p = sub.add_parser("token", help="create, list and revoke bearer tokens")
    token_sub = token_p.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print its secret once")
    create.add_argument("--subject", required=True, help="who the token is for")
    create.add_argument(
        "--scope", action="append", choices=SCOPES, required=True, help="repeat for several"
    )
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id")
    _recommender_parser(sub)
    return parser


def _recommender_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rec = sub.add_parser("recommender", help="train or evaluate the recommender")
    rec_sub = rec.add_subparsers(dest="recommender_command", required=True)
    rec_sub.add_parser("train", help="train now (waits; refused while another run holds the lease)")
    ev = rec_sub.add_parser("evaluate", help="ALS vs popularity on held-out events")
    ev.add_argument("--split", choices=("time", "random"), default="time")
    ev.add_argument("--test-fraction", type=_open_fraction, default=0.2)
    ev.add_argument("-k", type=_positive_int, default=10, help="cut-off of the metrics")
    ev.add_argument("--max-users", type=_positive_int, default=10_000, help="test users scored")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "upload":
        return _upload_command(args)
    # Imported here: the server side (aiohttp's app, SQLAlchemy, Alembic, numpy) takes about a
    # second to import, which `origin upload`, run from scripts and loops, does not need.
    from .commands import run

    return run(args)


def _upload_command(args: argparse.Namespace) -> int:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    options = Options(
        url=args.url.rstrip("/"),
        token=args.token,
        jobs=max(1, args.jobs),
        small_jobs=None if args.small_jobs is None else max(1, args.small_jobs),
        excludes=args.exclude,
        ignore_file=args.ignore_file,
        dry_run=args.dry_run,
        register=args.register,
        kind=args.kind,
        manifest=args.manifest,
        hash_cache=None if args.no_hash_cache else cache_home / "origin" / "upload-hashes.json",
        retries=max(1, args.retries),
        progress=args.progress,
    )
    try:
        check_url(options.url)
        if args.kind is not None and not KIND.fullmatch(args.kind):
            raise UsageError(f"--kind {args.kind!r}: a kind is {KIND.pattern}")
        if args.manifest is not None and not os.access(args.manifest.parent, os.W_OK):
            raise UsageError(f"--manifest {args.manifest}: cannot write in {args.manifest.parent}")
        items = collect(args.paths, options)
        if args.batch is not None:
            items += read_batch(read_text(args.batch).splitlines(), str(args.batch))
    except (UsageError, OSError) as exc:
        print(f"origin upload: {exc}", file=sys.stderr)
        return 2
    if not items:
        print(
            "origin upload: nothing to upload (name files, directories or -b FILE)", file=sys.stderr
        )
        return 2
    try:
        # uvloop, as the origin's workers: a tenth less of the client's CPU per MiB sent
        # (docs/BENCHMARKS.md, bulk upload).
        summary = uvloop.run(_stoppable(upload(items, options)))
    except OriginUnusable as exc:
        print(f"origin upload: {exc}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        uploaded = sum(item.uploaded for item in items)
        print(
            f"origin upload: stopped by {signal.Signals(stop.signum).name}; {uploaded} files "
            "uploaded before that. The same command again sends the rest.",
            file=sys.stderr,
        )
        return 128 + stop.signum
    if summary.dry_run:
        print(
            f"{summary.files} files: {summary.uploaded} would be uploaded ({summary.bytes_sent} "
            f"bytes), {summary.skipped} already there, {summary.failed} failed"
        )
        return 1 if summary.failed else 0
    rate = summary.bytes_sent / max(summary.seconds, 1e-6) / 2**20
    print(
        f"{summary.files} files: {summary.uploaded} uploaded ({summary.bytes_sent} bytes, "
        f"{rate:.1f} MiB/s), {summary.skipped} already there, {summary.failed} failed, "
        f"{summary.seconds:.1f}s"
    )
    return 1 if summary.failed else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _open_fraction(text: str) -> float:
    """Strictly between 0 and 1, so both parts of a split can hold events (NaN fails too)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), not {text}")
    return value


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


async def _stoppable(run: Coroutine[Any, Any, T]) -> T:
    """``run``, which SIGINT (Ctrl-C) and SIGTERM stop by cancelling it: what it holds unwinds
    (uploads in flight are abandoned, the hash cache is saved), then ``Interrupted``."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped_by: list[int] = []

    def stop(signum: int) -> None:
        stopped_by.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await run
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        raise Interrupted(stopped_by[0]) from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    sys.exit(main())
