"""A private nginx running the project's edge configuration (nginx/edge.conf.template).

The template is rendered into a temp directory with a main config of our own (``daemon off``,
pid file, error and access logs, temp paths all under that directory), on a free loopback
port, so a test or benchmark needs no system nginx service and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "nginx" / "edge.conf.template"
DIRECT_CONF = REPO / "nginx" / "edge-direct.conf"
# Where Debian's libnginx-mod-http-lua puts the modules direct mode needs (NDK first).
LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
MODULES_DIR = Path("/usr/lib/nginx/modules")
_PLACEHOLDER = re.compile(r"\$\{(EDGE_[A-Z_]+)\}")

MAIN_CONF = """\
{modules}daemon off;
master_process on;
worker_processes {workers};
pid {run}/nginx.pid;
error_log {run}/error.log {error_level};
{user}
events {{
    worker_connections 1024;
}}
http {{
    log_format edge '$request_method $uri $status $body_bytes_sent '
                    'range="$http_range" cache=$upstream_cache_status';
    access_log {access_log};
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    types {{ }}
    default_type application/octet-stream;
    include {run}/edge.conf;
}}
"""


class NginxError(RuntimeError):
    """nginx is missing, rejects the configuration, or did not start."""


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def render(template: str, values: dict[str, str]) -> str:
    """Fill in ``${EDGE_*}`` as envsubst would, leaving nginx's own ``$variables`` alone."""
    missing = placeholders(template) - values.keys()
    if missing:
        raise NginxError(f"no value for {', '.join(sorted(missing))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lua_available() -> bool:
    return all((MODULES_DIR / name).exists() for name in LUA_MODULES)


def lua_modules() -> str:
    if not lua_available():
        raise NginxError("direct mode needs the Lua module (apt-get install libnginx-mod-http-lua)")
    return "".join(f"load_module {MODULES_DIR / name};\n" for name in LUA_MODULES)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@dataclass
class EdgeNginx:
    """nginx with the edge configuration in front of ``origins`` (``host:port`` each)."""

    run_dir: Path
    origins: list[str]
    slice_size: str = "8m"
    cache_size: str = "1g"
    max_body_size: str = "16g"
    # "edge_blobs" caches blobs; "off" is the X-Accel-Redirect mode.
    blob_cache: str = "edge_blobs"
    accel_prefix: str = "/_accel/"
    # The origin's blob directory (X-Accel-Redirect mode); an empty directory otherwise.
    accel_root: Path | None = None
    # Direct mode (nginx/edge-direct.conf, needs the Lua module): with blob_cache "off".
    direct: bool = False
    workers: int = 1
    port: int = 0
    # The benchmark turns per-request logging off, as the static nginx it is compared with.
    access_log: bool = True
    error_level: str = "info"
    proc: subprocess.Popen[bytes] | None = None
    values: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The master process (its children are the workers)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def cache_dir(self) -> Path:
        return self.run_dir / "cache"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.run_dir / "access.log"

    def cache_files(self) -> list[Path]:
        return [p for p in self.cache_dir.rglob("*") if p.is_file()]

    def write_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        accel_root = self.accel_root or self.run_dir / "no-shared-disk"
        accel_root.mkdir(parents=True, exist_ok=True)
        self.values = {
            "EDGE_ORIGINS": " ".join(f"server {o} max_fails=0;" for o in self.origins),
            "EDGE_LISTEN": f"127.0.0.1:{self.port}",
            "EDGE_CACHE_DIR": str(self.cache_dir),
            "EDGE_CACHE_SIZE": self.cache_size,
            "EDGE_SLICE_SIZE": self.slice_size,
            "EDGE_MAX_BODY_SIZE": self.max_body_size,
            "EDGE_BLOB_CACHE": self.blob_cache,
            "EDGE_ACCEL_PREFIX": self.accel_prefix,
            "EDGE_ACCEL_ROOT": f"{accel_root}/",
            "EDGE_DIRECT_CONF": str(DIRECT_CONF) if self.direct else "/dev/null",
        }
        (self.run_dir / "edge.conf").write_text(render(TEMPLATE.read_text(), self.values))
        user = ""
        if os.geteuid() == 0:
            # Workers would switch to "nobody", who may not read a private temp directory.
            import pwd

            user = f"user {pwd.getpwuid(os.getuid()).pw_name};"
        conf = self.run_dir / "nginx.conf"
        access_log = f"{self.access_log_path} edge" if self.access_log else "off"
        conf.write_text(
            MAIN_CONF.format(
                modules=lua_modules() if self.direct else "",
                workers=self.workers,
                run=self.run_dir,
                user=user,
                access_log=access_log,
                error_level=self.error_level,
            )
        )
        return conf

    def command(self, conf: Path, *extra: str) -> list[str]:
        """nginx on ``conf``, in the foreground (``daemon off``), with ``extra`` flags."""
        binary = nginx_binary()
        if binary is None:
            raise NginxError("nginx is not installed (scripts/test installs it)")
        return [binary, *extra, "-p", str(self.run_dir), "-e", str(self.error_log), "-c", str(conf)]

    def start(self, timeout: float = 15.0) -> EdgeNginx:
        self.port = self.port or free_port()
        conf = self.write_config()
        checked = subprocess.run(self.command(conf, "-t", "-q"), capture_output=True, text=True)
        if checked.returncode != 0:
            raise NginxError(f"nginx rejects {conf}:\n{checked.stderr}")
        self.proc = subprocess.Popen(
            self.command(conf),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NginxError(f"nginx did not listen on {self.port}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
