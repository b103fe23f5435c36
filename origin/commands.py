"""The server-side commands of ``origin``: serve, db, token, recommender and verify.

``origin.cli`` parses the arguments and imports this module only for these commands.

A command that cannot start says why in one line on stderr and exits with status 2, as a
configuration error does (what only this machine can answer is tried first: ``preflight``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from sqlalchemy.exc import DBAPIError

from . import preflight, recommend_cli, verify
from .app import open_catalog
from .catalog import Catalog, SchemaMismatch, current_revision, downgrade, head_revision, upgrade
from .config import Config, ConfigError, hide_password, load_config
from .preflight import LISTEN_ERRORS, StartupError, listen_problem, reason
from .server import configure_logging, serve
from .tokens import Tokens

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Every command but ``upload``, from the parsed arguments; the exit status."""
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
            # Before anything is written: a start this machine cannot serve makes no admin
            # token. One that fails later (in a worker's own start) still prints the token
            # it made, with a line saying the server did not start (server.serve).
            preflight.check_listen(config)
        asyncio.run(preflight.check(config, args.command))
        if args.command == "serve":
            banner = asyncio.run(_prepare(config))
            return _serve(config, banner)
        if args.command == "db":
            return asyncio.run(_db_command(args, config))
        if args.command == "recommender":
            return asyncio.run(recommend_cli.run(args, config))
        if args.command == "verify":
            return asyncio.run(verify.run(config, jobs=args.jobs, record=args.record))
        return asyncio.run(_token_command(args, config))
    except ConfigError as exc:
        print(f"origin: configuration error: {exc}", file=sys.stderr)
        return 2
    except (SchemaMismatch, StartupError) as exc:
        print(f"origin: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:  # the database refused what the command asked (read-only, ...)
        log.debug("database error", exc_info=True)
        where = hide_password(config.catalog_url)
        print(f"origin: the database at {where} failed: {reason(exc)}", file=sys.stderr)
        return 2


def _serve(config: Config, banner: list[str]) -> int:
    try:
        return serve(config, banner)
    except OSError as exc:  # the port was taken between _check_listen and now
        if isinstance(exc, socket.gaierror) or exc.errno in LISTEN_ERRORS:
            raise StartupError(listen_problem(config, exc)) from None
        raise


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
