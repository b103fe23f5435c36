"""Recommendations and event ingestion over HTTP, against ``origin serve --workers N``.

Default size is the issue's target: 1,000,000 users x 200,000 assets x 20,000,000 events.

1. Setup (skipped with ``--reuse`` when WORK already holds it; then the catalog is migrated to
   head and the events earlier runs posted are deleted, so every run starts from the setup's
   state):
   * synthetic events (``recommender.generate``, seeded);
   * an ALS model trained on them in this process (``recommender.train``; kept in
     WORK/model-raw.bin and reused when the sizes match, since it is the slow part), then each
     user's top ``--precompute`` list (``recommender.precompute_top``, as the trainer does);
   * a SQLite catalog with one asset (and a fake blob: serving never reads it) per synthetic
     item, and the events themselves (``--catalog-events``, default all of them), bulk-inserted
     with the sqlite3 module in the exact column format SQLAlchemy writes, ``recorded_at`` =
     their time, so all of them lie before the model's cutoff;
   * the model stored as a blob and recorded in ``models`` by the trainer's own
     ``origin.trainer.publish_model``, with ``events_cutoff`` = the setup time.
2. ``origin serve --workers N`` on that data directory, waiting until every worker serves the
   model (bench/blob_bench.py's Server: process group, CPU accounting).
3. wrk (``-t THREADS -c CONNECTIONS``, bench/blob_bench.py's run_wrk) in one server run:
   ``/healthz``; ``GET /users/<random>/recommendations`` (bench/lua/recommend.lua; also with a
   kind filter); ``POST /events`` with bodies of ``--batch`` events for random users
   (bench/lua/events.lua; ingestion is checked in the catalog afterwards); recommendations
   once more, now that some users have events newer than the model (fold-in, live scoring).

Run it under the shared lock: ``flock /tmp/bench.lock .venv/bin/python bench/recommend_http.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blob_bench as bb

from blobstore import DiskBackend
from origin.catalog import Catalog, upgrade
from origin.catalog.schema import assets, blobs, events
from origin.trainer import publish_model
from recommender import (
    ALSConfig,
    InteractionConfig,
    Model,
    SyntheticConfig,
    SyntheticData,
    build_from_columns,
    generate,
    load_model,
    precompute_top,
    save_model,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
TOKEN = "bench-admin-token-0123456789"
KINDS = ("prop", "avatar", "scene", "texture")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pid_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def trained_model(args: argparse.Namespace, data: SyntheticData, work: Path) -> Model:
    key = {k: getattr(args, k) for k in ("users", "items", "events", "factors", "iterations")}
    cached, cached_key = work / "model-raw.bin", work / "model-raw.json"
    if cached.exists() and cached_key.exists() and json.loads(cached_key.read_text()) == key:
        log(f"reusing the trained model in {cached}")
        return load_model(cached)
    t = time.perf_counter()
    model = train(
        build_from_columns(data.columns, InteractionConfig()),
        ALSConfig(factors=args.factors, iterations=args.iterations),
    )
    log(f"trained in {time.perf_counter() - t:.1f}s")
    save_model(model, cached)
    cached_key.write_text(json.dumps(key))
    return model


def insert_events(path: Path, data: SyntheticData, item_ids: list[str], limit: int) -> int:
    """The synthetic events into the catalog's events table, in big executemany batches,
    ordered by id (the primary key's B-tree then only appends)."""
    c = data.columns
    n = min(limit, len(c))
    rng = np.random.default_rng(7)
    ids = np.sort(rng.integers(0, 2**63, size=(n,), dtype=np.int64).astype(np.uint64))
    low = rng.integers(0, 2**63, size=(n,), dtype=np.int64).astype(np.uint64)
    asset_hex = [uuid.UUID(a).hex for a in item_ids]
    users = c.user_ids
    kinds = c.kinds
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # setup only: the file is thrown away on failure
    conn.execute("PRAGMA cache_size=-1000000")
    sql = (
        "INSERT INTO events (id, user_id, asset_id, kind, weight, at, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    started = time.perf_counter()
    step = 500_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        times = [
            datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            for t in c.at[start:stop].tolist()
        ]
        rows = [
            (f"{hi:016x}{lo:016x}", users[u], asset_hex[i], kinds[k], w, at, at)
            for hi, lo, u, i, k, w, at in zip(
                ids[start:stop].tolist(), low[start:stop].tolist(), c.user[start:stop].tolist(),
                c.item[start:stop].tolist(), c.kind[start:stop].tolist(),
                np.nan_to_num(c.weight[start:stop], nan=1.0).tolist(), times, strict=True,
            )
        ]  # fmt: skip
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        rate = stop / (time.perf_counter() - started)
        log(f"events in the catalog: {stop:,} of {n:,} ({rate:,.0f}/s)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return n


async def setup(
    args: argparse.Namespace, work: Path, data_dir: Path, catalog_url: str | None
) -> dict[str, Any]:
    started = time.perf_counter()
    data = generate(
        SyntheticConfig(
            n_users=args.users, n_items=args.items, n_events=args.events, communities=100, seed=0
        )
    )
    log(f"generated {args.events:,} events in {time.perf_counter() - started:.1f}s")
    model = trained_model(args, data, work)
    model, stats = precompute_top(model, args.precompute)
    log(f"precomputed top {stats.k} for {stats.users:,} users in {stats.seconds:.1f}s "
        f"({stats.exact_scans:,} needed the exact scan)")  # fmt: skip
    model_path = work / "model.bin"
    save_model(model, model_path)
    catalog_path = data_dir / "catalog.sqlite"
    url = catalog_url or f"sqlite+aiosqlite:///{catalog_path}"
    catalog = Catalog.connect(url)
    await upgrade(catalog.engine)
    now = datetime.now(UTC)
    item_ids = list(model.item_ids)
    async with catalog.engine.begin() as conn:
        for start in range(0, len(item_ids), 20_000):
            chunk = list(enumerate(item_ids))[start : start + 20_000]
            digests = [hashlib.sha256(str(i).encode()).hexdigest() for i, _ in chunk]
            await conn.execute(
                blobs.insert(),
                [{"digest": d, "size": 1, "content_type": "model/gltf-binary", "sha256": d,
                  "facts": None, "created_at": now} for d in digests],
            )  # fmt: skip
            await conn.execute(
                assets.insert(),
                [{"id": uuid.UUID(a), "name": f"asset {i}",
                  "kind": KINDS[i % len(KINDS)], "blob_digest": d, "attributes": {},
                  "owner": "bench", "version": 1, "deleted": 0, "created_at": now,
                  "updated_at": now} for (i, a), d in zip(chunk, digests, strict=True)],
            )  # fmt: skip
    log(f"{len(item_ids):,} assets in the catalog")
    # Check once that the raw rows below read back exactly like SQLAlchemy's own.
    sample = uuid.uuid4()
    async with catalog.engine.begin() as conn:
        await conn.execute(
            events.insert().values(
                id=sample, user_id="probe", asset_id=uuid.UUID(item_ids[0]), kind="use",
                weight=1.0, at=now, recorded_at=now,
            )
        )  # fmt: skip
    await catalog.close()
    t = time.perf_counter()
    in_catalog = 0
    if catalog_url is None:  # the bulk load is SQLite's (a PostgreSQL run starts empty)
        in_catalog = await asyncio.to_thread(
            insert_events, catalog_path, data, item_ids, args.catalog_events
        )
    insert_seconds = time.perf_counter() - t
    catalog = Catalog.connect(url)
    async with catalog.engine.begin() as conn:
        await conn.execute(events.delete().where(events.c.id == sample))
    store = DiskBackend(data_dir)
    await store.start()
    cutoff = datetime.now(UTC)
    meta = model.meta
    details: dict[str, Any] = {
        "users": meta.n_users, "assets": meta.n_items, "events": meta.n_events,
        "training_seconds": meta.training_seconds, "precompute": model.top_k,
        "precompute_seconds": stats.seconds, "events_cutoff": cutoff.isoformat(),
        "evaluation": None,
    }  # fmt: skip
    record = await publish_model(catalog, store, model_path, details)
    await catalog.close()
    return {
        **details,
        "model_id": str(record.id),
        "model_bytes": model_path.stat().st_size,
        "catalog_events": in_catalog,
        "catalog_insert_seconds": insert_seconds,
        "setup_seconds": time.perf_counter() - started,
        "setup_rss_mib": pid_rss_mib(os.getpid()),
        "item_ids": item_ids,
    }


async def reset(url: str, cutoff: datetime) -> int:
    catalog = Catalog.connect(url)
    try:
        await upgrade(catalog.engine)
        async with catalog.engine.begin() as conn:
            result = await conn.execute(events.delete().where(events.c.recorded_at > cutoff))
        return int(result.rowcount)
    finally:
        await catalog.close()


def write_bodies(path: Path, users: int, item_ids: list[str], batch: int) -> None:
    """Event bodies for the ingestion run: random users and assets of the catalogue."""
    rng = random.Random(1)
    with open(path, "w") as out:
        for _ in range(40):
            events = [
                {"user": f"user-{rng.randrange(users):07d}",
                 "asset": item_ids[rng.randrange(len(item_ids))],
                 "kind": rng.choice(("download", "use", "like"))}
                for _ in range(batch)
            ]  # fmt: skip
            out.write(json.dumps({"events": events}) + "\n")


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def wait_for_model(url: str, model_id: str) -> None:
    deadline = time.monotonic() + 900
    in_a_row = 0
    while time.monotonic() < deadline:
        try:
            body = get_json(f"{url}/users/user-0000001/recommendations")
            in_a_row = in_a_row + 1 if body["model_version"] == model_id else 0
        except OSError:
            in_a_row = 0
        if in_a_row >= 20:  # new connections each time: every worker has it
            return
        time.sleep(0.2)
    raise RuntimeError("the server never served the model")


def summary(run: bb.Run, command: str) -> dict[str, Any]:
    return {
        "rps": run.rps,
        "requests": run.requests,
        "duration_s": run.duration_s,
        "errors": run.errors,
        "latency_ms": {k: v / 1000 for k, v in run.latency_us.items()},
        "server_cpu_pct": run.server_cpu_pct,
        "client_cpu_pct": run.client_cpu_pct,
        "other_cpu_pct": run.other_cpu_pct,
        "command": command,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recommend-http"))
    parser.add_argument("--reuse", action="store_true", help="keep WORK's catalog and model")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument(
        "--catalog-events", type=int, default=sys.maxsize, help="events in the catalog (all)"
    )
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--precompute", type=int, default=100, help="top N stored per user")
    parser.add_argument("--batch", type=int, default=500, help="events per POST /events")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="catalog on a private PostgreSQL (tests/postgres_server.py), without old events",
    )
    parser.add_argument("--setup-only", action="store_true", help="build WORK, measure nothing")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="wait up to this long for an idle machine per run")  # fmt: skip
    parser.add_argument("--max-other", type=float, default=25.0,
                        help="repeat a run when other load took more CPU %% than this")  # fmt: skip
    args = parser.parse_args()
    work: Path = args.work
    data_dir = work / "data"
    postgres = None
    catalog_url = None
    if args.postgres:
        from tests.postgres_server import PostgresServer

        postgres = PostgresServer().start()
        catalog_url = postgres.create_database()
    try:
        return run(args, work, data_dir, catalog_url)
    finally:
        if postgres is not None:
            postgres.stop()


def run(args: argparse.Namespace, work: Path, data_dir: Path, catalog_url: str | None) -> int:
    if args.reuse and not args.postgres and (work / "setup.json").exists():
        info = json.loads((work / "setup.json").read_text())
        # A catalog built by older code: `origin serve` refuses a schema behind its own. And
        # the state the setup left: without the events an earlier run posted (newer than the
        # model, they would send their users to live scoring).
        t = time.perf_counter()
        url = f"sqlite+aiosqlite:///{data_dir / 'catalog.sqlite'}"
        removed = asyncio.run(reset(url, datetime.fromisoformat(info["events_cutoff"])))
        log(f"catalog at head, {removed:,} events of earlier runs removed "
            f"({time.perf_counter() - t:.1f}s)")  # fmt: skip
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        info = asyncio.run(setup(args, work, data_dir, catalog_url))
        write_bodies(work / "bodies.jsonl", args.users, info.pop("item_ids"), args.batch)
        (work / "setup.json").write_text(json.dumps(info))
    if args.setup_only:
        return 0
    # What blob_bench's start_origin and run_wrk read from their argparse namespace.
    ns = argparse.Namespace(
        origin=Path(sys.executable).parent / "origin", workers=args.workers, origin_env=[],
        start_timeout=900.0, wrk="wrk", threads=args.threads, quiet_wait=args.quiet_wait,
        quiet_idle=85.0, retries=2, max_other=args.max_other,
    )  # fmt: skip
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    wrk_log = logs / "wrk.log"
    env = {"ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "0"}
    if catalog_url is not None:
        env["ORIGIN_DATABASE_URL"] = catalog_url
    server = bb.start_origin(ns, data_dir, logs, TOKEN, extra_env=env)
    url = server.url
    results: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        wait_for_model(url, info["model_id"])
        log(f"model served by every worker after {time.perf_counter() - t:.1f}s")
        results["server_rss_mib"] = {str(pid): pid_rss_mib(pid) for pid in server.pids()}
        log(f"server processes' RSS (MiB; the mapped model counts in each): "
            f"{results['server_rss_mib']}")  # fmt: skip

        def wrk(
            name: str, target: str, script: Path, env: dict[str, str], warm: bool = True
        ) -> bb.Run:
            if warm:
                bb.run_wrk(ns, server, target, script, args.connections, 2, 0, wrk_log, env)

            def once() -> bb.Run:
                return bb.run_wrk(
                    ns, server, target, script, args.connections, args.duration, 0, wrk_log, env
                )

            if warm:  # repeatable: again when other load showed up
                run = bb.measure(ns, name, once)
            else:  # POST /events: one run, or the catalog count would include the retries
                bb.wait_quiet(ns, name)
                run = once()
            settings = " ".join(f"{k}={v}" for k, v in env.items())
            command = f"{settings} wrk -t{args.threads} -c{args.connections} "
            command += f"-d{args.duration:g}s -s {script.name} {target}"
            results[name] = summary(run, command.strip())
            log(f"{name}: {run.rps:,.0f} req/s, p50 {run.latency_us['p50'] / 1000:.1f} ms, "
                f"p99 {run.latency_us['p99'] / 1000:.1f} ms, errors {run.error_count}")  # fmt: skip
            return run

        users = {"BENCH_USERS": str(args.users), "BENCH_LIMIT": "10"}
        health = wrk("healthz", f"{url}/healthz", LUA / "get.lua", {})
        recs = wrk("recommendations", url, LUA / "recommend.lua", users)
        wrk("recommendations_kind", url, LUA / "recommend.lua", {**users, "BENCH_KIND": "scene"})
        bodies = {"BENCH_BODIES": str(work / "bodies.jsonl"), "BENCH_TOKEN": TOKEN}
        script = LUA / "events.lua"
        bb.run_wrk(ns, server, url, script, args.connections, 2, 0, wrk_log, bodies)  # warm
        time.sleep(3)  # the warm-up's events reach the catalog first
        before = get_json(f"{url}/admin/recommender", TOKEN)["catalog_events"]
        ingest = wrk("events", url, script, bodies, warm=False)
        ended = time.perf_counter()
        status = get_json(f"{url}/admin/recommender", TOKEN)
        # Until both workers' buffers are empty: each answer is one worker's, so ask on new
        # connections until 10 answers in a row say so.
        empty = 0
        while empty < 10:
            buffered = get_json(f"{url}/admin/recommender", TOKEN)["buffered_events"]
            empty = 0 if buffered else empty + 1
            time.sleep(0.2)
        status["drained_after_s"] = time.perf_counter() - ended
        after = get_json(f"{url}/admin/recommender", TOKEN)["catalog_events"]
        time.sleep(2)  # both workers' tails have read the other's events
        # Now every event posted is in the catalog and tailed by both workers: users with
        # events newer than the model are scored live (fold-in).
        wrk("recommendations_after_ingest", url, LUA / "recommend.lua", users)
    finally:
        server.stop()
    results["events"]["events_per_second_accepted"] = ingest.rps * args.batch
    results["events"]["events_in_catalog"] = after - before
    results["events"]["buffered_at_the_end"] = status["buffered_events"]
    results["events"]["drained_after_s"] = status["drained_after_s"]
    # Sustained: what reached the catalog over the run plus the time the buffers took to
    # drain after it (the buffers absorb ~200k events, which flatters a 15 s accepted rate).
    results["events"]["events_per_second_stored"] = (after - before) / (
        ingest.duration_s + status["drained_after_s"]
    )
    results["ratio"] = recs.rps / health.rps
    doc = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}",
        "catalog": "postgresql" if catalog_url else "sqlite",
        "setup": info,
        **results,
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
