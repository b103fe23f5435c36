"""Configuration layering and validation, and what ``origin serve`` does with a bad one."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.config import Config, ConfigError, MiB, load_config, parse_size

from .conftest import mounted_tmpfs
from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


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
        ('port = "x"\n', {}, "port: expected an integer, got 'x'"),
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


# -- values that were accepted, or crashed at start, and are configuration errors now ---------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A readable stand-in for a key and a known_hosts file (validation only reads them)."""
    key = tmp_path / "id_ed25519"
    key.write_text("not read as a key here\n")
    return {"ORIGIN_SFTP_KEY": str(key), "ORIGIN_SFTP_KNOWN_HOSTS": str(key)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORIGIN_SFTP_URL": "sftp://u@h:abc/p"}, "sftp_url: the port must be a number 1..65535"),
        ({"ORIGIN_SFTP_URL": "sftp://u@h:0/p"}, "sftp_url: the port must be a number"),
        ({"ORIGIN_SFTP_URL": "sftp://h:22/p"}, "sftp_url: needs the user to log in as"),
        ({"ORIGIN_SFTP_URL": "sftp://u@:22/p"}, "sftp_url: needs a host"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:abc/0"}, "redis_url: the port must be"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:99999/0"}, "redis_url: the port must be"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:6379/cache"},
         "redis_url: the path must be a database number"),
        ({"ORIGIN_REDIS_URL": "unix://"}, "redis_url: a unix:// URL needs the socket's path"),
        ({"ORIGIN_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:abc/db"},
         "database_url: must be a URL such as"),
        ({"ORIGIN_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:70000/db"},
         "database_url: the port must be a number 1..65535"),
        ({"ORIGIN_TIER_RETRY_MAX": "-1"}, "tier_retry_max: must be 0.5..3600 seconds (got -1.0"),
        ({"ORIGIN_TIER_RETRY_MAX": "0"}, "tier_retry_max: must be 0.5..3600"),
        ({"ORIGIN_TIER_RETRY_MAX": "nan"}, "tier_retry_max: expected a finite number, got 'nan'"),
        ({"ORIGIN_SHUTDOWN_TIMEOUT": "0"}, "shutdown_timeout: must be 1..3600 seconds (got 0.0"),
        ({"ORIGIN_RECOMMENDER_LEASE_TTL": "inf"}, "recommender_lease_ttl: expected a finite"),
        ({"ORIGIN_RECOMMENDER_LEASE_TTL": "1e300"}, "recommender_lease_ttl: must be 1..86400"),
        ({"ORIGIN_RECOMMENDER_LEASE_TTL": "1e400"}, "recommender_lease_ttl: expected a finite"),
        ({"ORIGIN_RECOMMENDER_ALPHA": "inf"}, "recommender_alpha: expected a finite number"),
        ({"ORIGIN_RECOMMENDER_ALPHA": "1e9"}, "recommender_alpha: must be in (0, 10000]"),
        ({"ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "inf"}, "recommender_train_interval: expected a"),
        ({"ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "0.001"}, "recommender_train_interval: must be 0"),
        ({"ORIGIN_RECOMMENDER_REGULARIZATION": "-inf"}, "recommender_regularization: expected"),
        ({"ORIGIN_RECOMMENDER_HALF_LIFE": "1"}, "recommender_half_life: must be 0 (no decay)"),
        ({"ORIGIN_REDIS_TIMEOUT": "1_0"}, "redis_timeout: expected a number, got '1_0'"),
        ({"ORIGIN_PORT": "80_80"}, "port: expected an integer, got '80_80'"),
        ({"ORIGIN_PORT": "\uff18\uff10"}, "port: expected an integer"),  # fullwidth 80
        ({"ORIGIN_WORKERS": "2.7"}, "workers: expected an integer, got '2.7'"),
    ],
)  # fmt: skip
def test_bad_values_are_configuration_errors(
    files: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={**files, **env})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORIGIN_SFTP_URL": "sftp://u@h/p", "ORIGIN_SFTP_KEY": "/nonexistent/key"},
         "sftp_key: cannot read it: No such file or directory (got '/nonexistent/key')"),
        ({"ORIGIN_SFTP_URL": "sftp://u@h/p", "ORIGIN_SFTP_KNOWN_HOSTS": "/nonexistent/kh"},
         "sftp_known_hosts: cannot read it: No such file"),
        ({"ORIGIN_SFTP_URL": "sftp://u@h/p", "ORIGIN_SFTP_KEY": "/"},
         "sftp_key: is not a regular file"),
    ],
)  # fmt: skip
def test_files_that_cannot_be_read_here_are_configuration_errors_at_start(
    files: dict[str, str], env: dict[str, str], message: str
) -> None:
    config = load_config(env={**files, **env})  # valid: the files are the machine's
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("workers = 2.7\n", "workers: expected an integer, got 2.7 (from "),
        ("workers = 2.0\n", "workers: expected an integer, got 2.0"),
        ("port = 80.5\n", "port: expected an integer, got 80.5"),
        ("port = [1]\n", "port: expected an integer, got [1]"),
        ("port = true\n", "port: expected an integer, got True"),
        ("max_blob_size = true\n", "max_blob_size: expected a size"),
        ("max_blob_size = 1.5\n", "max_blob_size: expected a size"),
        ("redis_timeout = true\n", "redis_timeout: expected a number, got True"),
        ("redis_timeout = nan\n", "redis_timeout: expected a finite number, got nan"),
        ("recommender_lease_ttl = inf\n", "recommender_lease_ttl: expected a finite number"),
        ("recommender_lease_ttl = 1e300\n", "recommender_lease_ttl: must be 1..86400"),
        ("recommender_alpha = inf\n", "recommender_alpha: expected a finite number"),
        ("tier_retry_max = -1\n", "tier_retry_max: must be 0.5..3600 seconds (got -1.0, from "),
        ("host = [1]\n", "host: expected a string, got [1]"),
        ("data_dir = [1]\n", "data_dir: expected a path, got [1]"),
        ('data_dir = ""\n', "data_dir: expected a path"),
    ],
)
def test_toml_values_of_the_wrong_type_are_refused(tmp_path: Path, doc: str, message: str) -> None:
    file = tmp_path / "origin.toml"
    file.write_text(doc)
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    assert message in str(caught.value)
    assert str(file) in str(caught.value)  # and where it came from


def test_values_at_the_edges_are_accepted(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    config = load_config(env={
        "ORIGIN_SFTP_URL": "sftp://origin@bulk.internal/srv/assets",  # port 22 by default
        "ORIGIN_SFTP_KEY": str(key), "ORIGIN_SFTP_KNOWN_HOSTS": str(key),
        "ORIGIN_REDIS_URL": "redis://127.0.0.1:65535/15",
        "ORIGIN_DATABASE_URL": "cockroachdb+asyncpg://root:p%40ss@db:26257/origin?sslmode=off",
        "ORIGIN_TIER_RETRY_MAX": "0.5", "ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "0",
        "ORIGIN_RECOMMENDER_LEASE_TTL": "86400", "ORIGIN_RECOMMENDER_ALPHA": "1e4",
        "ORIGIN_RECOMMENDER_HALF_LIFE": "3600", "ORIGIN_RECOMMENDER_REGULARIZATION": "0",
        "ORIGIN_PORT": " 8081 ", "ORIGIN_REDIS_TIMEOUT": ".5",
    })  # fmt: skip
    assert (config.port, config.tier_retry_max, config.redis_timeout) == (8081, 0.5, 0.5)
    for url in ("redis://cache", "rediss://:pw@cache:6380", "unix:///run/redis.sock"):
        assert load_config(env={"ORIGIN_REDIS_URL": url}).redis_url == url
    file = tmp_path / "origin.toml"
    file.write_text("redis_timeout = 1\ntier_retry_max = 60\nworkers = 2\n")
    assert load_config(file, env={}).redis_timeout == 1.0


def test_errors_do_not_show_passwords() -> None:
    for env in (
        {"ORIGIN_DATABASE_URL": "postgresql+asyncpg://u:hunter2secret@h:abc/db"},
        {"ORIGIN_DATABASE_URL": "postgresql+asyncpg://u:hunter2secret@h:0/db"},
        {"ORIGIN_DATABASE_URL": "mysql://u:hunter2secret@h/db"},
        {"ORIGIN_REDIS_URL": "redis://:hunter2secret@h:abc/0"},
        {"ORIGIN_ADMIN_TOKEN": "hunter2secret"},
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(env=env)
        assert "hunter2secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", True), ("port", 80.5), ("workers", "2"), ("tier_retry_max", math.nan),
     ("recommender_alpha", math.inf), ("recommender_lease_ttl", True), ("chunk_size", 1.5)],
)  # fmt: skip
def test_validate_checks_types_of_a_config_built_in_code(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        dataclasses.replace(Config(), **{key: value}).validate()  # type: ignore[arg-type]


# -- origin serve: one line on stderr and status 2, nothing started ---------------------------


def origin_fails(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, command: str = "serve"
) -> str:
    """Run ``origin COMMAND ARGS`` (serve: on a free port unless ARGS say otherwise); it must
    exit 2 with one line on stderr and nothing on stdout. Returns that line."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORIGIN_")}
    argv = [sys.executable, "-m", "origin", command, *args]
    if command == "serve":
        if "--data-dir" not in args:
            argv += ["--data-dir", str(tmp_path / "data")]
        if "--port" not in args:
            argv += ["--port", "0"]
    done = subprocess.run(
        argv, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("origin: ")
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ORIGIN_SFTP_URL": "sftp://u@127.0.0.1:abc/p"}, "sftp_url: the port must be"),
        ({"ORIGIN_SFTP_URL": "sftp://127.0.0.1:22/p"}, "sftp_url: needs the user"),
        ({"ORIGIN_SFTP_URL": "sftp://u@127.0.0.1/p", "ORIGIN_SFTP_KEY": "/nonexistent/key"},
         "sftp_key: cannot read it"),
        ({"ORIGIN_SFTP_URL": "sftp://u@127.0.0.1/p", "ORIGIN_SFTP_KNOWN_HOSTS": "/nonexistent"},
         "sftp_known_hosts: cannot read it"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:abc/0"}, "redis_url: the port must be"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:99999/0"}, "redis_url: the port must be"),
        ({"ORIGIN_REDIS_URL": "redis://127.0.0.1:6379/0?socket_timeout=soon"},
         "redis_url: Invalid value for 'socket_timeout'"),
        ({"ORIGIN_DATABASE_URL": "postgresql+asyncpg://u:pw@127.0.0.1:abc/db"},
         "database_url: must be a URL"),
        ({"ORIGIN_TIER_RETRY_MAX": "-1"}, "tier_retry_max: must be 0.5..3600"),
        ({"ORIGIN_RECOMMENDER_LEASE_TTL": "inf"}, "recommender_lease_ttl: expected a finite"),
    ],
)  # fmt: skip
def test_serve_with_a_bad_setting_says_so_in_one_line(
    tmp_path: Path, files: dict[str, str], env: dict[str, str], expected: str
) -> None:
    line = origin_fails(tmp_path, env={**files, **env})
    assert line.startswith("origin: configuration error: ")
    assert expected in line


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("port = [1]\n", "port: expected an integer, got [1]"),
        ("port = 80.5\n", "port: expected an integer, got 80.5"),
        ("workers = 2.7\n", "workers: expected an integer, got 2.7"),
    ],
)
def test_serve_with_a_bad_toml_value(tmp_path: Path, doc: str, expected: str) -> None:
    file = tmp_path / "origin.toml"
    file.write_text(doc)
    line = origin_fails(
        tmp_path, "--data-dir", str(tmp_path / "d"), env={"ORIGIN_CONFIG": str(file)}
    )
    assert expected in line


def test_serve_with_an_unreachable_database(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://origin:hunter2secret@127.0.0.1:{port}/catalog"
    line = origin_fails(tmp_path, env={"ORIGIN_DATABASE_URL": url})
    assert line.startswith(
        f"origin: cannot reach the database at postgresql+asyncpg://origin:***@127.0.0.1:{port}"
        "/catalog (database_url): "
    ), line
    assert "hunter2secret" not in line
    # The other commands that use the catalog say the same.
    for command, args in (("db", ("current",)), ("token", ("list",))):
        other = origin_fails(tmp_path, *args, command=command, env={"ORIGIN_DATABASE_URL": url})
        assert other.startswith("origin: cannot reach the database at "), other


def test_serve_on_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    line = origin_fails(tmp_path, "--host", "no-such-host.invalid")
    assert line.startswith("origin: cannot listen on no-such-host.invalid:0: host ")
    assert "does not resolve" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on, without SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_starts_nothing(tmp_path: Path, taken_port: int) -> None:
    line = origin_fails(tmp_path, "--port", str(taken_port), "--host", "127.0.0.1")
    assert line == (
        f"origin: cannot listen on 127.0.0.1:{taken_port}: port {taken_port} is in use by "
        "another program"
    )
    # Checked before the catalog is made: a first start's admin token, printed only once the
    # server listens, was created and lost.
    assert not (tmp_path / "data" / "catalog.sqlite").exists()


def test_serve_with_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    line = origin_fails(tmp_path, "--data-dir", str(file))
    assert line == f"origin: data_dir {file}: exists and is not a directory"


def test_serve_with_a_data_dir_that_cannot_be_made(tmp_path: Path) -> None:
    line = origin_fails(tmp_path, "--data-dir", "/proc/origin-test-data")
    assert line.startswith("origin: data_dir /proc/origin-test-data: cannot create it (")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (tmpfs mounted ro): root may write anywhere else."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


def test_serve_with_a_read_only_data_dir(tmp_path: Path, read_only_dir: Path) -> None:
    line = origin_fails(tmp_path, "--data-dir", str(read_only_dir))
    assert line == f"origin: data_dir {read_only_dir}: cannot write in it (Read-only file system)"


@pytest.fixture
def ssh_files(tmp_path: Path) -> dict[str, str]:
    """A real private key and an empty known_hosts file."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed: scripts/test installs openssh-client")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    return {"ORIGIN_SFTP_KEY": str(key), "ORIGIN_SFTP_KNOWN_HOSTS": str(known_hosts)}


def test_serve_with_an_unreachable_sftp_store(tmp_path: Path, ssh_files: dict[str, str]) -> None:
    port = free_port()
    env = {**ssh_files, "ORIGIN_SFTP_URL": f"sftp://origin@127.0.0.1:{port}/srv/assets"}
    for workers in ("1", "2"):  # with two, each spawned worker printed its traceback
        line = origin_fails(tmp_path, "--workers", workers, env=env)
        assert line.startswith("origin: cannot use the SFTP store (sftp_url): cannot connect to ")
    assert not (tmp_path / "data" / "catalog.sqlite").exists()


def test_serve_with_a_file_that_is_not_a_key(tmp_path: Path, ssh_files: dict[str, str]) -> None:
    key = tmp_path / "not-a-key"
    key.write_text("hello\n")
    env = {**ssh_files, "ORIGIN_SFTP_KEY": str(key), "ORIGIN_SFTP_URL": "sftp://u@127.0.0.1/p"}
    line = origin_fails(tmp_path, env=env)
    assert line.startswith(f"origin: configuration error: sftp_key: cannot use '{key}': ")
