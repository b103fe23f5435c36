"""Recommendations and event ingestion over HTTP, against ``origin serve --workers N``.

1. Setup (skipped with ``--reuse`` when WORK already holds it): synthetic events
   (``recommender.generate``), an ALS model trained on them in this process, a SQLite catalog
   holding one asset per synthetic item (fake blobs: serving never reads them), the model
   stored as a blob in the origin's disk store and recorded in ``models``. No events go into
   the catalog: a user's fold-in query then finds nothing, as for a user with no recent events.
2. ``origin serve --workers N`` on that data directory, waiting until every worker serves the
   model.
3. wrk (``-t THREADS -c CONNECTIONS``): ``/healthz``; ``GET /users/<random>/recommendations``
   (bench/lua/recommend.lua); ``POST /events`` with bodies of ``--batch`` events each
   (bench/lua/events.lua). Ingestion is checked in the catalog afterwards.

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
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blobstore import DiskBackend, Expectation
from origin.catalog import Catalog, RecommenderCatalog, upgrade
from origin.catalog.schema import assets, blobs
from recommender import (
    ALSConfig,
    InteractionConfig,
    SyntheticConfig,
    build_from_columns,
    generate,
    model_to_bytes,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
TOKEN = "bench-admin-token-0123456789"
KINDS = ("prop", "avatar", "scene", "texture")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def setup(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    synthetic = SyntheticConfig(
        n_users=args.users, n_items=args.items, n_events=args.events, communities=100, seed=0
    )
    data = generate(synthetic)
    log(f"generated {args.events} events in {time.perf_counter() - started:.1f}s")
    t = time.perf_counter()
    model = train(
        build_from_columns(data.columns, InteractionConfig()),
        ALSConfig(factors=args.factors, iterations=args.iterations),
    )
    train_seconds = time.perf_counter() - t
    log(f"trained in {train_seconds:.1f}s")
    catalog = Catalog.connect(f"sqlite+aiosqlite:///{data_dir / 'catalog.sqlite'}")
    await upgrade(catalog.engine)
    now = datetime.now(UTC)
    item_ids = data.columns.item_ids
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
    store = DiskBackend(data_dir)
    await store.start()
    payload = model_to_bytes(model)

    async def chunks() -> Any:
        for at in range(0, len(payload), 1 << 20):
            yield payload[at : at + (1 << 20)]

    result = await store.put(chunks(), Expectation(), "application/vnd.origin.recommender-model")
    await catalog.record_blob(result.info)
    meta = model.meta
    details: dict[str, Any] = {
        "users": meta.n_users, "assets": meta.n_items, "events": meta.n_events,
        "training_seconds": train_seconds, "evaluation": None,
    }  # fmt: skip
    await RecommenderCatalog(catalog.engine).record_model(str(result.info.digest), now, details)
    await catalog.close()
    info: dict[str, Any] = {**details, "model_bytes": len(payload)}
    info["setup_seconds"] = time.perf_counter() - started
    info["item_ids"] = list(item_ids)
    return info


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


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def start_server(data_dir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "ORIGIN_ADMIN_TOKEN": TOKEN, "ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "origin", "--data-dir", str(data_dir), "serve", "--port", "0",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # Keep draining the server's output so it never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError("origin did not start")


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def wait_for_model(url: str) -> None:
    deadline = time.monotonic() + 600
    in_a_row = 0
    while time.monotonic() < deadline:
        try:
            body = get_json(f"{url}/users/user-0000001/recommendations")
            in_a_row = in_a_row + 1 if body["model_version"] else 0
        except OSError:
            in_a_row = 0
        if in_a_row >= 20:  # new connections each time: both workers have it
            return
        time.sleep(0.2)
    raise RuntimeError("the server never served the model")


def wrk(args: argparse.Namespace, url: str, script: Path | None, *extra: str) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
           "--timeout", "10s"]  # fmt: skip
    cmd += ["-s", str(script or LUA / "get.lua"), url]
    if extra:
        cmd += ["--", *extra]
    # A short unmeasured run first: connections, caches and the page cache warm up.
    warm = [*cmd]
    warm[warm.index("-d") + 1] = "2s"
    subprocess.run(warm, capture_output=True, check=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds
    result["command"] = " ".join(cmd)
    log(f"{url}: {result['rps']:.0f} req/s, p99 {result['latency_us']['p99'] / 1000:.1f} ms, "
        f"errors {result['errors']}")  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recommend-http"))
    parser.add_argument("--reuse", action="store_true", help="keep WORK's catalog and model")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500, help="events per POST /events")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data_dir = args.work / "data"
    if args.reuse and (args.work / "setup.json").exists():
        info = json.loads((args.work / "setup.json").read_text())
    else:
        subprocess.run(["rm", "-rf", str(args.work)], check=True)
        data_dir.mkdir(parents=True)
        info = asyncio.run(setup(args, data_dir))
        write_bodies(args.work / "bodies.jsonl", args.users, info.pop("item_ids"), args.batch)
        (args.work / "setup.json").write_text(json.dumps(info))
    proc, url = start_server(data_dir, args.workers)
    try:
        t = time.perf_counter()
        wait_for_model(url)
        log(f"model served by every worker after {time.perf_counter() - t:.1f}s")
        health = wrk(args, f"{url}/healthz", None)
        recs = wrk(args, url, LUA / "recommend.lua", str(args.users))
        before = get_json(f"{url}/admin/recommender", TOKEN)["catalog_events"]
        ingest = wrk(args, url, LUA / "events.lua", str(args.work / "bodies.jsonl"), TOKEN)
        time.sleep(3)  # buffers flush within recommender_flush_interval
        after = get_json(f"{url}/admin/recommender", TOKEN)["catalog_events"]
    finally:
        proc.terminate()
        proc.wait(60)
    seconds = ingest["duration_us"] / 1e6
    results = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}",
        "setup": info,
        "healthz": health,
        "recommendations": recs,
        "events": ingest,
        "ratio": recs["rps"] / health["rps"],
        "events_per_second_accepted": ingest["requests"] * args.batch / seconds,
        "events_in_catalog": after - before,
        "events_per_second_stored": (after - before) / seconds,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
