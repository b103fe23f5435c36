"""Configuration layering and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.config import ConfigError, MiB, load_config, parse_size


def test_defaults_are_the_embedded_default() -> None:
    config = load_config(env={})
    assert config.data_dir == Path("data")
    assert config.workers == 1
    assert config.admin_token is None


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "origin.toml"
    file.write_text('port = 9000\nworkers = 3\nmax_blob_size = "2GiB"\ndata_dir = "/srv/a"\n')
    env = {"ORIGIN_CONFIG": str(file), "ORIGIN_WORKERS": "4", "ORIGIN_DRAIN_LIMIT": "1MiB"}
    config = load_config(env=env, overrides={"workers": 5, "host": None})
    assert config.port == 9000  # file
    assert config.max_blob_size == 2 << 30  # file, with a unit
    assert config.drain_limit == MiB  # environment
    assert config.workers == 5  # flag beats environment beats file
    assert config.host == "127.0.0.1"  # a flag not given changes nothing
    assert config.data_dir == Path("/srv/a")


@pytest.mark.parametrize(
    ("doc", "env", "message"),
    [
        ("prot = 1\n", {}, "prot: unknown setting (from "),
        ("port = 70000\n", {}, "port: must be between"),
        ('port = "x"\n', {}, "port: invalid literal"),
        ("", {"ORIGIN_ACCESS_LOG": "maybe"}, "access_log: expected true or false"),
        ("", {"ORIGIN_MAX_BLOB_SIZE": "12 parsecs"}, "environment variable ORIGIN_MAX_BLOB_SIZE"),
        ("port = [\n", {}, "config file"),
    ],
)
def test_errors_name_the_key_and_source(
    tmp_path: Path, doc: str, env: dict[str, str], message: str
) -> None:
    file = tmp_path / "origin.toml"
    file.write_text(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(file, env=env)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.toml", env={})


@given(st.integers(0, 1 << 40), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "kb", "MB"]))
def test_parse_size(n: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30, "kb": 1000, "MB": 10**6}
    assert parse_size(f"{n}{unit}") == n * factor[unit]
    assert parse_size(f" {n} {unit} ") == n * factor[unit]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--data-dir", "/srv/x", "--port", "0"],  # the documented form
        ["--data-dir", "/srv/x", "serve", "--port", "0"],
    ],
)
def test_serve_takes_data_dir_before_or_after_the_command(argv: list[str]) -> None:
    from origin.cli import _parser

    args = _parser().parse_args(argv)
    assert args.data_dir == "/srv/x"
    assert args.port == 0


def test_serve_without_data_dir_keeps_the_default() -> None:
    from origin.cli import _parser

    assert _parser().parse_args(["serve"]).data_dir is None
