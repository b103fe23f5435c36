"""The HTTP origin: aiohttp app, routes, auth, configuration, CLI and process model."""

from .app import create_app
from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "create_app", "load_config"]
