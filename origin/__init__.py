"""The HTTP origin: aiohttp app, routes, auth, configuration, CLI and process model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["Config", "ConfigError", "create_app", "load_config"]


def __getattr__(name: str) -> Any:
    # The app (and with it SQLAlchemy, Alembic, numpy) loads on first use, so that the light
    # parts of the package, such as `origin upload`, start in a fraction of a second.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'origin' has no attribute {name!r}")
