"""The ``origin`` command: ``serve`` and the operator's ``token`` tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config
from .server import configure_logging, serve
from .tokens import SCOPES, TokenStore


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
    if args.command == "serve":
        configure_logging(config)
        return serve(config, _admin_banner(config))
    return _token_command(args, TokenStore(config.data_dir / "tokens.json"))


def _admin_banner(config: Config) -> list[str]:
    """On first start, create an admin token and say it once; later starts only remind."""
    if config.admin_token:
        return ["admin token: from ORIGIN_ADMIN_TOKEN"]
    store = TokenStore(config.data_dir / "tokens.json")
    if store.has_admin():
        return ["admin token: created at first start (origin token create makes more)"]
    _token, secret = store.create("admin", ("admin",))
    return [f"admin token (shown once, store it now): {secret}"]


def _token_command(args: argparse.Namespace, store: TokenStore) -> int:
    if args.token_command == "create":
        token, secret = store.create(args.subject, tuple(args.scope))
        print(f"id {token.id} subject {token.subject} scopes {','.join(token.scopes)}")
        print(secret)
        return 0
    if args.token_command == "list":
        for token in store.list():
            print(f"{token.id}\t{token.subject}\t{','.join(token.scopes)}\t{token.created_at}")
        return 0
    if store.revoke(args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"origin: no token with id {args.id}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
