"""``origin recommender train|evaluate``: the operator's recommender tools."""

from __future__ import annotations

import argparse
import asyncio
import sys

from recommender import evaluate_columns

from .app import durable_store, open_catalog
from .catalog import Catalog, RecommenderCatalog
from .config import Config
from .trainer import Trainer, TrainerBusy, als_config, interaction_config, read_columns


async def run(args: argparse.Namespace, config: Config) -> int:
    catalog = Catalog.connect(config.catalog_url)
    try:
        await open_catalog(config, catalog)
        if args.recommender_command == "train":
            return await _train(config, catalog)
        return await _evaluate(args, config, catalog)
    finally:
        await catalog.close()


async def _train(config: Config, catalog: Catalog) -> int:
    try:
        async with durable_store(config) as store:
            record = await Trainer(config, catalog, store).train()
    except TrainerBusy as exc:
        print(f"origin: {exc}", file=sys.stderr)
        return 1
    d = record.details
    print(f"model {record.id} blob {record.blob_digest}")
    print(f"{d['users']} users, {d['assets']} assets, {d['events']} events; "
          f"read {d['read_seconds']}s, trained {d['training_seconds']}s")  # fmt: skip
    return 0


async def _evaluate(args: argparse.Namespace, config: Config, catalog: Catalog) -> int:
    columns = await read_columns(RecommenderCatalog(catalog.engine))
    if not len(columns):
        print("origin: the catalog has no events to evaluate on", file=sys.stderr)
        return 1
    evaluation = await asyncio.to_thread(
        evaluate_columns, columns, interaction_config(config), als_config(config),
        method=args.split, test_fraction=args.test_fraction, k=args.k, max_users=args.max_users,
    )  # fmt: skip
    table = evaluation.table()
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"ALS / popularity, precision@{args.k}: {evaluation.lift('precision'):.2f}x")
    users = evaluation.rows[0].users
    print(f"{evaluation.cold_users} of {users} test users have no training events: "
          "both rows rank them by popularity, as serving does")  # fmt: skip
    return 0
