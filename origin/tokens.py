"""Bearer tokens with scopes, kept hashed in the catalog.

Secrets are ``orgn_`` + 256 random bits, so a plain SHA-256 of the secret is a safe verifier (a
slow password hash only helps low-entropy secrets). Each worker caches lookups, found or not,
for ``CACHE_SECONDS``: a revocation reaches every worker within that time, and a flood of bad
tokens costs the database one query per distinct token per period.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

if TYPE_CHECKING:  # only the type: `origin upload` imports SCOPES and must stay light
    from .catalog import Catalog

SCOPES = ("read", "write", "admin")
SECRET_PREFIX = "orgn_"
CACHE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    subject: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def verifier(secret: str) -> str:
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: such a secret is unknown.
    return hashlib.sha256(secret.encode(errors="surrogateescape")).hexdigest()


class Tokens:
    def __init__(self, catalog: Catalog, admin_secret: str | None = None) -> None:
        self._catalog = catalog
        self._admin_verifier = verifier(admin_secret) if admin_secret else None
        self._cache: TTLCache[str, Token | None] = TTLCache(maxsize=10_000, ttl=CACHE_SECONDS)

    async def create(self, subject: str, scopes: tuple[str, ...]) -> tuple[Token, str]:
        """A new token; its secret is returned once and never stored."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {SCOPES}, got {scopes}")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        token = Token(secrets.token_hex(6), subject, tuple(sorted(set(scopes))))
        await self._catalog.add_token(verifier(secret), token.id, subject, token.scopes)
        return token, secret

    async def list(self) -> list[Token]:
        return [Token(r.id, r.subject, r.scopes) for r in await self._catalog.tokens()]

    async def revoke(self, token_id: str) -> bool:
        return await self._catalog.revoke_token(token_id)

    async def has_admin(self) -> bool:
        return any(t.allows("admin") for t in await self.list())

    async def authenticate(self, secret: str) -> Token | None:
        key = verifier(secret)
        if self._admin_verifier and hmac.compare_digest(key, self._admin_verifier):
            return Token("env", "admin", SCOPES)
        if key in self._cache:
            return self._cache[key]
        record = await self._catalog.token(key)
        token = None if record is None else Token(record.id, record.subject, record.scopes)
        self._cache[key] = token
        return token

    async def import_file(self, path: Path) -> int:
        """Tokens from the ``tokens.json`` of earlier versions (already hashed); then renamed."""
        try:
            text = await asyncio.to_thread(path.read_text)
        except FileNotFoundError:
            return 0
        known = {t.id for t in await self.list()}
        records: dict[str, dict[str, Any]] = json.loads(text)
        imported = 0
        for key, record in records.items():
            if record["id"] not in known:
                scopes = [str(s) for s in record["scopes"]]
                await self._catalog.add_token(key, record["id"], record["subject"], scopes)
                imported += 1
        await asyncio.to_thread(path.rename, path.with_suffix(".json.imported"))
        return imported
