"""Bearer tokens with scopes, stored hashed in ``<data_dir>/tokens.json``.

Secrets are 256 random bits, so a plain SHA-256 of the secret is a safe verifier (a slow
password hash only helps low-entropy secrets). Every worker re-reads the file when it changes,
checking at most once a second, so a revocation reaches all workers within that second. The
"Catalog" issue moves tokens into the database; this file format is its import source.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

SCOPES = ("read", "write", "admin")
SECRET_PREFIX = "orgn_"
_RELOAD_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    subject: str
    scopes: tuple[str, ...]
    created_at: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _verifier(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path, admin_secret: str | None = None) -> None:
        self.path = path
        self._admin_verifier = _verifier(admin_secret) if admin_secret else None
        self._by_verifier: dict[str, Token] = {}
        self._loaded_mtime: int | None = None
        self._checked_at = 0.0

    # -- operator side (CLI, first start): synchronous, serialised by a lock file ---------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read_file()
            yield records
            temp = self.path.with_suffix(f".{os.getpid()}.tmp")
            temp.write_text(json.dumps(records, indent=2))
            os.replace(temp, self.path)

    def _read_file(self) -> dict[str, dict[str, object]]:
        try:
            doc: dict[str, dict[str, object]] = json.loads(self.path.read_text())
            return doc
        except FileNotFoundError:
            return {}

    def create(self, subject: str, scopes: tuple[str, ...]) -> tuple[Token, str]:
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {SCOPES}, got {scopes}")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        token = Token(
            id=secrets.token_hex(6),
            subject=subject,
            scopes=tuple(sorted(set(scopes))),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._locked() as records:
            records[_verifier(secret)] = asdict(token)
        return token, secret

    def list(self) -> list[Token]:
        return sorted(self._parse(self._read_file()).values(), key=lambda t: t.created_at)

    def revoke(self, token_id: str) -> bool:
        with self._locked() as records:
            doomed = [v for v, r in records.items() if r.get("id") == token_id]
            for verifier in doomed:
                del records[verifier]
        return bool(doomed)

    def has_admin(self) -> bool:
        return any(t.allows("admin") for t in self.list())

    # -- request side -------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Token | None:
        verifier = _verifier(secret)
        if self._admin_verifier and hmac.compare_digest(verifier, self._admin_verifier):
            return Token("env", "admin", SCOPES, "")
        now = time.monotonic()
        if now - self._checked_at >= _RELOAD_INTERVAL:
            self._checked_at = now
            await asyncio.to_thread(self._reload_if_changed)
        return self._by_verifier.get(verifier)

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_verifier, self._loaded_mtime = {}, None
            return
        if mtime != self._loaded_mtime:
            self._by_verifier = self._parse(self._read_file())
            self._loaded_mtime = mtime

    @staticmethod
    def _parse(records: dict[str, dict[str, object]]) -> dict[str, Token]:
        return {
            verifier: Token(
                id=str(r["id"]),
                subject=str(r["subject"]),
                scopes=tuple(str(s) for s in r["scopes"]),  # type: ignore[attr-defined]
                created_at=str(r["created_at"]),
            )
            for verifier, r in records.items()
        }
