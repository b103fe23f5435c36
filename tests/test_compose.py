"""docker-compose.yml and the Dockerfiles, checked without a Docker engine (there is none here).

The origin's own configuration loader reads the origin service's environment, so a wrong key
or value fails here as it would at start; every host that configuration names must be a
service that listens on the named port.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from origin.config import load_config

from .nginx_server import TEMPLATE, placeholders
from .postgres_server import PostgresServer

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_NGINX_SIZE = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``; ``$$`` is a literal $."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":-", "-"):
            return arg or ""
        raise AssertionError(f"${{{name}}} is not set in .env.example ({arg or 'no default'})")

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def origin_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: str(v) for k, v in services["origin"]["environment"].items()}


def listens_on(service: dict[str, Any], port: int) -> bool:
    return str(port) in {str(p) for p in service.get("expose", [])}


def hosts(url: str) -> list[tuple[str, int]]:
    """Every host:port of a URL, including asyncpg's multi-host ``?host=h:p&host=...``."""
    parts = urlsplit(url)
    found = [
        (h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]))
        for h in parse_qs(parts.query).get("host", [])
    ]
    if parts.hostname:
        found.append((parts.hostname, parts.port or 0))
    return found


def test_compose_file_parses_and_has_the_stack(services: dict[str, dict[str, Any]]) -> None:
    for name in ("roach1", "roach2", "roach3", "roach-init", "redis", "sftp", "origin-migrate",
                 "origin", "edge"):  # fmt: skip
        assert name in services, name


def test_origin_configuration_loads(services: dict[str, dict[str, Any]]) -> None:
    config = load_config(env=origin_env(services))
    assert config.database_url is not None
    assert config.database_url.startswith("cockroachdb+asyncpg://")
    assert config.redis_url is not None
    assert config.sftp_url is not None
    assert config.workers >= 1
    assert config.host == "0.0.0.0"


def test_every_host_the_origin_names_is_a_service_on_that_port(
    services: dict[str, dict[str, Any]],
) -> None:
    config = load_config(env=origin_env(services))
    named = {
        "database_url": hosts(config.database_url or ""),
        "redis_url": hosts(config.redis_url or ""),
        "sftp_url": hosts(config.sftp_url or ""),
    }
    assert len(named["database_url"]) == 3  # every CockroachDB node, for failover
    for key, found in named.items():
        assert found, key
        for host, port in found:
            assert host in services, f"{key} names {host}, which is not a service"
            assert listens_on(services[host], port), f"{host} does not expose {port} ({key})"
    for host, port in named["database_url"]:
        command = " ".join(services[host]["command"])
        assert f"--listen-addr=:{port}" in command
        assert f"--advertise-addr={host}:{port}" in command
    redis = services["redis"]["command"]
    assert redis[redis.index("--port") + 1] == str(named["redis_url"][0][1])
    sshd_config = (REPO / "deploy" / "sftp" / "sshd_config").read_text()
    assert re.search(rf"(?m)^Port {named['sftp_url'][0][1]}$", sshd_config)


def test_secrets_and_files_the_origin_needs_are_mounted(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    config = load_config(env=origin_env(services))
    origin = services["origin"]
    mounted = {f"/run/secrets/{name}" for name in origin.get("secrets", [])}
    assert str(config.sftp_key) in mounted
    assert str(config.sftp_known_hosts) in mounted
    for name in origin["secrets"] + services["sftp"]["secrets"]:
        source = compose["secrets"][name]["file"]
        assert source.startswith("./deploy/secrets/"), "secrets live outside git"
        made_by_script = Path(source).name in (REPO / "deploy" / "make-secrets.sh").read_text()
        assert made_by_script, source
    ca = origin_env(services)["PGSSLROOTCERT"]
    assert any(v.endswith(":" + str(Path(ca).parent) + ":ro") for v in origin["volumes"])
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    assert "deploy/secrets/" in (REPO / ".gitignore").read_text().splitlines()


def test_env_example_holds_no_secrets() -> None:
    values = env_example()
    for key in ("ORIGIN_DB_PASSWORD", "REDIS_PASSWORD", "ORIGIN_ADMIN_TOKEN"):
        assert values[key].startswith("change"), f"{key} in .env.example must be a placeholder"
    # Every variable the compose file uses without a default is in the example.
    for m in _VAR.finditer(COMPOSE.read_text()):
        if not (m.group(2) or "").endswith("-"):
            assert m.group(1) in values, m.group(1)


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image (a built one needs a name:version too)"
        _, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
    for dockerfile in (REPO / "Dockerfile", REPO / "deploy" / "sftp" / "Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                base = line.split()[1]
                assert re.fullmatch(r"[a-z0-9./-]+:[0-9][\w.-]*", base), f"{dockerfile}: {base}"


def test_start_order_and_health(services: dict[str, dict[str, Any]]) -> None:
    def condition(service: str, on: str) -> str:
        value: str = services[service]["depends_on"][on]["condition"]
        return value

    assert services["origin-migrate"]["command"] == ["db", "upgrade"]
    assert condition("origin-migrate", "roach-init") == "service_completed_successfully"
    assert condition("origin", "origin-migrate") == "service_completed_successfully"
    assert condition("origin", "redis") == "service_healthy"
    assert condition("origin", "sftp") == "service_healthy"
    assert condition("edge", "origin") == "service_healthy"
    for node in ("roach1", "roach2", "roach3"):
        assert condition(node, "roach-certs") == "service_completed_successfully"
    for name in ("roach1", "roach2", "roach3", "redis", "sftp", "origin", "edge"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert services[name].get("restart") == "unless-stopped", name
    assert services["origin"]["deploy"]["replicas"] >= 2
    # Only the edge is reachable from outside.
    assert [n for n, s in services.items() if s.get("ports")] == ["edge"]


def test_redis_is_a_cache(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]

    def arg(flag: str) -> str:
        value: str = command[command.index(flag) + 1]
        return value

    assert arg("--maxmemory-policy") == "allkeys-lru"
    assert re.fullmatch(r"[1-9]\d*[kmg]b?", arg("--maxmemory"))
    assert arg("--save") == ""
    assert arg("--appendonly") == "no"
    assert "volumes" not in services["redis"]


def test_edge_settings_match_the_template_and_the_origin(
    services: dict[str, dict[str, Any]],
) -> None:
    edge = services["edge"]
    env = {k: str(v) for k, v in edge["environment"].items()}
    assert placeholders(TEMPLATE.read_text()) <= env.keys()
    assert any(
        v.endswith(":/etc/nginx/templates/default.conf.template:ro") for v in edge["volumes"]
    )
    config = load_config(env=origin_env(services))
    assert f"server origin:{config.port}" in env["EDGE_ORIGINS"]
    limit = env["EDGE_MAX_BODY_SIZE"]
    assert int(limit[:-1]) * _NGINX_SIZE[limit[-1]] == config.max_blob_size
    assert env["EDGE_LISTEN"] == edge["ports"][0].rsplit(":", 1)[1]
    # Cache mode: the edge does not share the origins' disks.
    assert env["EDGE_BLOB_CACHE"] == "edge_blobs"
    assert config.accel_redirect is None


def test_sshd_config_is_valid(tmp_path: Path) -> None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        pytest.skip("sshd is not installed")
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    text = (REPO / "deploy" / "sftp" / "sshd_config").read_text()
    conf = tmp_path / "sshd_config"
    conf.write_text(text.replace("/etc/ssh/ssh_host_ed25519_key", str(key)))
    checked = subprocess.run([sshd, "-t", "-f", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


async def test_multi_host_catalog_url_fails_over(postgres: PostgresServer) -> None:
    """The catalog URL form the stack uses (every node in ``?host=``) skips a dead first host."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from .redis_server import free_port

    single = urlsplit(postgres.create_database())
    url = (f"postgresql+asyncpg://postgres@{single.path}?host=127.0.0.1:{free_port()}"
           f"&host=127.0.0.1:{single.port}")  # fmt: skip
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def compose_command() -> list[str] | None:
    """``docker compose`` (the plugin), else ``docker-compose`` (1.29, Debian's package)."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if plugin.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_config_passes() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    done = subprocess.run(
        [*command, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
