"""Bearer authentication for writes; blob reads stay public, as a CDN's are."""

from __future__ import annotations

from aiohttp import web

from . import problems
from .appkeys import TOKENS
from .tokens import Token


async def authenticate(request: web.Request) -> Token | None:
    """The caller's token, None for an anonymous request; a bad token is a 401."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise problems.unauthorized("Authorization must be 'Bearer <token>'")
    token = await request.app[TOKENS].authenticate(secret.strip())
    if token is None:
        raise problems.unauthorized("the bearer token is unknown or revoked")
    return token


async def require(request: web.Request, scope: str) -> Token:
    token = await authenticate(request)
    if token is None:
        raise problems.unauthorized(f"this request needs a bearer token with the {scope!r} scope")
    if not token.allows(scope):
        raise problems.forbidden(scope)
    return token
