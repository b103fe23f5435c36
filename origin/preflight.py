"""What a command needs of this machine, tried before it starts or writes anything.

``Config.validate`` checks the settings; what only this machine can answer (the port is taken,
the host does not resolve, the database or the SFTP store cannot be reached, the data
directory cannot be written, a key file cannot be read) is tried here, so that a command that
cannot start says why in one line (``StartupError`` or ``ConfigError``) instead of a traceback
from deep inside a worker.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import socket
import tempfile

import asyncpg  # type: ignore[import-untyped]  # no stubs; only its exception classes
import asyncssh
from sqlalchemy.exc import DBAPIError

from blobstore import BackendUnavailable, SftpBackend
from cache import RedisTier

from .catalog import Catalog
from .config import Config, ConfigError, hide_password
from .server import reserve_port

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The command cannot start on this machine with this configuration: one line saying why."""


# Only binding fails this way (EACCES could be any file the in-process worker opens).
LISTEN_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL}


def check_listen(config: Config) -> None:
    """Bind as ``serve`` will (SO_REUSEPORT: another origin sharing the port is no conflict)."""
    try:
        reserve_port(config.host, config.port).close()
    except OSError as exc:
        raise StartupError(listen_problem(config, exc)) from None


def listen_problem(config: Config, exc: OSError) -> str:
    host, port = config.host, config.port
    where = f"cannot listen on {f'[{host}]' if ':' in host else host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: host {host!r} does not resolve ({exc.strerror})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: host {host!r} is not an address of this machine"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: port {port} is in use by another program"
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return f"{where}: port {port} is privileged (below 1024: root or CAP_NET_BIND_SERVICE)"
    return f"{where}: {exc.strerror or exc}"


async def check(config: Config, command: str) -> None:
    """What the command needs, tried before it starts (StartupError or ConfigError)."""
    if command in ("serve", "recommender", "verify") or config.database_url is None:
        await asyncio.to_thread(_check_data_dir, config)
    if command in ("serve", "recommender", "verify"):
        await _check_redis(config)
        await _check_sftp(config)
    await _check_database(config)


def _check_data_dir(config: Config) -> None:
    """The data directory exists (made if not) and a file can be written in it."""
    path = config.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"data_dir {path}: exists and is not a directory") from None
    except OSError as exc:
        raise StartupError(f"data_dir {path}: cannot create it ({exc.strerror})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"data_dir {path}: cannot write in it ({exc.strerror})") from None


async def _check_redis(config: Config) -> None:
    """The URL as the Redis tier reads it (its query parameters too). Not a connection: a
    Redis that is down makes the origin degraded, not unable to start."""
    if not config.redis_url:
        return
    try:
        tier = RedisTier(config.redis_url, max_object=1, timeout=config.redis_timeout)
    except ValueError as exc:
        url = hide_password(config.redis_url)
        raise ConfigError(f"redis_url: {exc} (got {url!r})") from None
    await tier.close()


async def _check_sftp(config: Config) -> None:
    """The key loads, and the store answers (host key, login, layout), as each worker's start
    needs; a failure there would otherwise stop every worker with a traceback."""
    if not config.sftp_url:
        return
    config.check_files()
    assert config.sftp_key is not None  # validated
    try:  # Config.validate read the URL; what is left to refuse here is the key
        SftpBackend.from_url(config.sftp_url, client_keys=[config.sftp_key], known_hosts=None)
    except ValueError as exc:
        raise ConfigError(f"sftp_key: cannot use {str(config.sftp_key)!r}: {exc}") from None
    backend = SftpBackend.from_url(
        config.sftp_url,
        client_keys=[config.sftp_key],
        known_hosts=config.sftp_known_hosts,
        pool_size=1,
        chunk_size=config.chunk_size,
    )
    ssh_log = logging.getLogger("asyncssh")
    level = ssh_log.level
    ssh_log.setLevel(max(logging.WARNING, ssh_log.getEffectiveLevel()))  # the workers say it
    try:
        await backend.start()
    except BackendUnavailable as exc:
        raise StartupError(f"cannot use the SFTP store (sftp_url): {exc}") from None
    except ValueError as exc:  # asyncssh reads known_hosts when it connects
        path = str(config.sftp_known_hosts)
        raise ConfigError(f"sftp_known_hosts: cannot use {path!r}: {exc}") from None
    except asyncssh.SFTPError as exc:
        raise StartupError(
            f"cannot set up the SFTP store at {backend.where} (sftp_url): {exc.reason}"
        ) from None
    finally:
        await backend.close()
        ssh_log.setLevel(level)


async def _check_database(config: Config) -> None:
    """An external catalog answers (the embedded one is a file in the data directory)."""
    if config.catalog_url.startswith("sqlite"):
        return
    catalog = Catalog.connect(config.catalog_url)
    try:
        async with catalog.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    # Refused, unresolvable, timed out (OSError); the server said no (asyncpg's errors at
    # connect are not wrapped by SQLAlchemy: no such database, role, password).
    except (OSError, DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("cannot reach the database", exc_info=True)
        where = hide_password(config.catalog_url)
        raise StartupError(
            f"cannot reach the database at {where} (database_url): {reason(exc)}"
        ) from None
    finally:
        await catalog.close()


def reason(exc: BaseException) -> str:
    """The driver's own message, on one line."""
    orig = getattr(exc, "orig", None)  # DBAPIError wraps the driver's exception
    text = str(orig if orig is not None else exc)
    # SQLAlchemy's asyncpg adapter writes "<class 'asyncpg.exceptions.X'>: message".
    text = re.sub(r"^<class '[\w.]+'>: ", "", text)
    if isinstance(exc, TimeoutError) and not text:
        text = "timed out"
    return " ".join(text.split()) or type(exc).__name__
