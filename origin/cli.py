"""The ``origin`` command: ``serve``, and the operator's ``db`` and ``token`` tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .app import open_catalog
from .catalog import Catalog, SchemaMismatch, current_revision, downgrade, head_revision, upgrade
from .config import Config, ConfigError, load_config
from .server import configure_logging, serve
from .tokens import SCOPES, Tokens


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

    db_p = sub.add_parser("db", help="the catalog's schema")
    db_sub = db_p.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to this code's schema (and import tokens.json)")
    down = db_sub.add_parser("downgrade", help="migrate down, e.g. to -1 or a revision")
    down.add_argument("revision")
    db_sub.add_parser("current", help="print the schema revision of the database and the code")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {"data_dir": args.data_dir}
    if args.command == "serve":
        overrides |= {"host": args.host, "port": args.port, "workers": args.workers}
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"origin: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    try:
        if args.command == "serve":
            banner = asyncio.run(_prepare(config))
            return serve(config, banner)
        if args.command == "db":
            return asyncio.run(_db_command(args, config))
        return asyncio.run(_token_command(args, config))
    except SchemaMismatch as exc:
        print(f"origin: {exc}", file=sys.stderr)
        return 2


async def _prepare(config: Config) -> list[str]:
    """Before the workers start: the schema is right, and there is a way to log in."""
    catalog = Catalog.connect(config.catalog_url)
    try:
        await open_catalog(config, catalog)
        tokens = Tokens(catalog)
        await tokens.import_file(config.data_dir / "tokens.json")
        if config.admin_token:
            return ["admin token: from ORIGIN_ADMIN_TOKEN"]
        if await tokens.has_admin():
            return ["admin token: created at first start (origin token create makes more)"]
        _token, secret = await tokens.create("admin", ("admin",))
        return [f"admin token (shown once, store it now): {secret}"]
    finally:
        await catalog.close()


async def _db_command(args: argparse.Namespace, config: Config) -> int:
    catalog = Catalog.connect(config.catalog_url)
    try:
        if args.db_command == "upgrade":
            config.data_dir.mkdir(parents=True, exist_ok=True)
            await upgrade(catalog.engine)
            imported = await Tokens(catalog).import_file(config.data_dir / "tokens.json")
            print(f"schema at {await current_revision(catalog.engine)}", end="")
            print(f"; imported {imported} token(s) from tokens.json" if imported else "")
        elif args.db_command == "downgrade":
            await downgrade(catalog.engine, args.revision)
            print(f"schema at {await current_revision(catalog.engine)}")
        else:
            print(f"database {await current_revision(catalog.engine)} code {head_revision()}")
        return 0
    finally:
        await catalog.close()


async def _token_command(args: argparse.Namespace, config: Config) -> int:
    catalog = Catalog.connect(config.catalog_url)
    try:
        await open_catalog(config, catalog)
        tokens = Tokens(catalog)
        if args.token_command == "create":
            token, secret = await tokens.create(args.subject, tuple(args.scope))
            print(f"id {token.id} subject {token.subject} scopes {','.join(token.scopes)}")
            print(secret)
            return 0
        if args.token_command == "list":
            for token in await tokens.list():
                print(f"{token.id}\t{token.subject}\t{','.join(token.scopes)}")
            return 0
        if await tokens.revoke(args.id):
            print(f"revoked {args.id}")
            return 0
        print(f"origin: no token with id {args.id}", file=sys.stderr)
        return 1
    finally:
        await catalog.close()


if __name__ == "__main__":
    sys.exit(main())
