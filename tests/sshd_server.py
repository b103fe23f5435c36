"""A private OpenSSH sshd (SFTP subsystem) on a free loopback port, which tests may stop and start.

Everything lives in one temp directory: host and user keys made with ssh-keygen, the config, the
authorized_keys and known_hosts files, the log, and ``sftp/``, the directory tests use as the
store's root. As root the server logs in as root; otherwise as the current user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from .redis_server import free_port

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it insists on an absolute path


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key without passphrase at ``path``; returns the public key's path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub")


class SshdServer:
    def __init__(self, workdir: Path) -> None:
        if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
            raise RuntimeError("OpenSSH is not installed: scripts/test installs openssh-server")
        self.workdir = workdir
        self.port = free_port()
        self.user = "root" if os.geteuid() == 0 else getpass.getuser()
        self.root = workdir / "sftp"
        self.host_key = workdir / "host_ed25519"
        self.client_key = workdir / "client_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._prepare()

    @property
    def url(self) -> str:
        return self.url_at(self.root)

    def url_at(self, root: Path) -> str:
        """The ``sftp://`` URL of a store at ``root`` on this server."""
        return f"sftp://{self.user}@127.0.0.1:{self.port}{root}"

    def origin_env(self, root: Path | None = None) -> dict[str, str]:
        """An origin's environment for this server as its durable store (at ``root``, by
        default the server's own; the benchmarks give each run its own)."""
        return {
            "ORIGIN_SFTP_URL": self.url_at(root or self.root),
            "ORIGIN_SFTP_KEY": str(self.client_key),
            "ORIGIN_SFTP_KNOWN_HOSTS": str(self.known_hosts),
        }

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host_pub = keygen(self.host_key, "test-host")
        client_pub = keygen(self.client_key, "test-client")
        (self.workdir / "authorized_keys").write_bytes(client_pub.read_bytes())
        self.write_known_hosts(self.known_hosts, host_pub)
        if os.geteuid() == 0:
            # The privilege separation directory that the Debian service would create.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            # OpenSSH's defaults plus one CBC cipher: tests/test_sftp_backend.py checks that the
            # ignore-packet countermeasure is kept for CBC (blobstore/sshtune.py).
            "Ciphers +aes128-cbc",
            # OpenSSH >= 9.8 would lock 127.0.0.1 out after the refused host-key test.
            "PerSourcePenalties no",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True)
        if check.returncode != 0 and b"PerSourcePenalties" in check.stderr:
            lines.remove("PerSourcePenalties no")  # an sshd older than 9.8 does not know it
            self.config.write_text("\n".join(lines) + "\n")

    def write_known_hosts(self, path: Path, host_pub: Path) -> Path:
        key_type, key = host_pub.read_text().split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {key_type} {key}\n")
        return path

    def start(self) -> SshdServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill the listener and every session it forked, so clients see their connections drop.

        Each session process calls setsid(), so killing a process group would miss them: the
        listener is frozen first (it cannot fork any more), then its whole tree is killed.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGSTOP)
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.proc.wait(10)
        # A dead session has closed its sockets; its zombie is for init to reap, in its own time.
        deadline = time.monotonic() + 10
        for proc in tree[1:]:
            while time.monotonic() < deadline and _running(proc):
                time.sleep(0.01)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
