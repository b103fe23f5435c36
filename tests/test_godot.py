"""The real Godot 3.2 engine (headless ``godot3-server``) as a client of a live origin."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import blake3
import pytest

from .conftest import LiveOrigin

CLIENT = Path(__file__).parent / "godot" / "client.gd"
GODOT = "godot3-server"
# Large enough that Godot cannot finish writing it into the socket buffers: if the server
# answered 401 and closed without reading, Godot would see a connection error, not the 401.
DENIED_SIZE = 8 << 20

pytestmark = pytest.mark.skipif(
    shutil.which(GODOT) is None,
    reason=f"{GODOT} is not installed (scripts/test installs it: apt-get install -y {GODOT})",
)


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def fetch(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _text(stream: bytes | str | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def run_godot(workdir: Path, args: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Runs client.gd and returns its RESULT object; the exit code alone proves nothing."""
    command = [GODOT, "-s", str(CLIENT), "--", *(f"{k}={v}" for k, v in args.items())]
    try:
        proc = subprocess.run(
            command,
            cwd=workdir,  # Godot writes logs/ into its working directory
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # A runtime error in _init skips quit(), and the engine then idles until killed.
        pytest.fail(
            f"godot did not exit within {timeout} s\n--- stdout\n{_text(exc.stdout)}\n"
            f"--- stderr\n{_text(exc.stderr)}"
        )
    out, err = _text(proc.stdout), _text(proc.stderr)
    report = f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    # Godot exits 0 even on a parse error, so only the script's own line says it ran.
    assert len(lines) == 1, f"client.gd printed no single RESULT line, {report}"
    # GDScript carries on after some runtime errors with a null value, so a RESULT line can
    # still come out of a broken run.
    assert "SCRIPT ERROR" not in err, f"client.gd raised a script error, {report}"
    result: dict[str, Any] = json.loads(lines[0].removeprefix("RESULT "))
    return result


def test_godot_client_downloads_verifies_and_uploads(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    blob = os.urandom(300 * 1024)
    digest = b3(blob)
    auth = {"Authorization": f"Bearer {live_origin.token}"}
    # Explicit, or urllib sends (and the origin stores) application/x-www-form-urlencoded.
    headers = {**auth, "Content-Type": "application/octet-stream"}
    status, _ = fetch(f"{live_origin.url}/blobs/{digest}", "PUT", blob, headers)
    assert status == 201

    # Zero bytes, 0xFF and CR LF are what a text-only upload path would mangle.
    post_body = b"\x00\xff\r\n\x00" + os.urandom(64 * 1024) + b"\xff\x00"
    put_body = os.urandom(100 * 1024) + b"\x00\xff"
    denied_body = os.urandom(DENIED_SIZE)
    files = {"post_file": post_body, "put_file": put_body, "denied_file": denied_body}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    result = run_godot(
        tmp_path,
        {
            "origin": live_origin.url,
            "token": live_origin.token,
            "digest": digest,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "missing": b3(b"never uploaded"),
            "save_to": str(tmp_path / "downloaded.bin"),
            **{name: str(tmp_path / name) for name in files},
            "put_digest": b3(put_body),
            "denied_digest": b3(denied_body),
        },
    )
    sha256 = hashlib.sha256(blob).hexdigest()
    etag = f'"{digest}"'

    get = result["get"]
    assert (get["status"], get["error"]) == (200, ""), get
    assert get["content_length"] == get["received"] == len(blob), get
    assert get["repr_sha256"] == get["stream_sha256"] == get["file_sha256"] == sha256, get
    assert get["etag"] == etag
    assert get["content_type"] == "application/octet-stream"
    assert (tmp_path / "downloaded.bin").read_bytes() == blob

    head = result["head"]
    assert (head["status"], head["error"]) == (200, ""), head
    assert (head["content_length"], head["etag"], head["received"]) == (len(blob), etag, 0)

    rng = result["range"]
    assert (rng["status"], rng["error"]) == (206, ""), rng
    assert rng["content_range"] == f"bytes 10-19/{len(blob)}"
    assert bytes.fromhex(rng["hex"]) == blob[10:20]

    not_modified = result["not_modified"]
    assert not_modified == {"status": 304, "error": "", "received": 0}

    missing = result["missing"]
    assert (missing["status"], missing["error"]) == (404, ""), missing
    assert missing["content_type"].startswith("application/problem+json")

    post = result["post"]
    assert (post["status"], post["error"], post["sent"]) == (201, "", len(post_body)), post
    assert post["digest"] == b3(post_body)
    assert post["location"] == f"/blobs/{b3(post_body)}"
    assert post["size"] == len(post_body)
    assert post["sha256"] == post["local_sha256"] == hashlib.sha256(post_body).hexdigest()
    assert fetch(f"{live_origin.url}/blobs/{b3(post_body)}") == (200, post_body)

    put = result["put"]
    assert (put["status"], put["error"], put["sent"]) == (201, "", len(put_body)), put
    assert fetch(f"{live_origin.url}/blobs/{b3(put_body)}") == (200, put_body)

    denied = result["put_unauthorized"]
    assert (denied["status"], denied["error"]) == (401, ""), denied
    assert denied["content_type"].startswith("application/problem+json")
    assert fetch(f"{live_origin.url}/blobs/{b3(denied_body)}", "HEAD")[0] == 404

    alias = result["sha256_alias"]
    assert (alias["status"], alias["error"]) == (308, ""), alias
    assert alias["location"].endswith(f"/blobs/{digest}")

    assert result["engine"].startswith("3.")
