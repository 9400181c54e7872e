"""No command, log line or process title shows a password, written, decoded or encoded.

Whatever the URL holds: ``@ / ? # : %`` in the password, encoded or not, a username, a
``?password=`` in the query, ``rediss://`` or ``unix://``; against servers that do not answer
and servers that refuse the password.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis import Redis

from ezgraph.settings import Settings

from ..conftest import ROOT, ezgraph_cli, ezgraph_process, subprocess_env, wait_for
from .conftest import EzgraphHere
from .private_servers import ADMIN, acl_server, binaries, free_port

CHAIN = "tests.graphs.chain"
SLOW = "tests.graphs.flaky.slow"  # a sleeps the payload's `sleep` seconds -> b
PASSWORD = "Q@X/Z:%J#?K"  # every character a URL gives a meaning to
ENCODED = quote(PASSWORD, safe="")

# Redis URLs no server answers, each with its password (letters no message holds, so that any
# piece of 3 characters shown is a leak): unencoded characters where the URL parsers stop,
# encoded ones, a username, the query string, TLS, a Unix socket.
UNREACHABLE_REDIS = {
    "hash": ("redis://:QX#ZJV@127.0.0.1:1/0", "QX#ZJV"),
    "question mark": ("redis://:QX?ZJV@127.0.0.1:1/0", "QX?ZJV"),
    "slash": ("redis://:QX/ZJV@127.0.0.1:1/0", "QX/ZJV"),
    "at sign": ("redis://user:QX@ZJV@127.0.0.1:1/0", "QX@ZJV"),
    "colon": ("redis://user:QX:ZJV@127.0.0.1:1/0", "QX:ZJV"),
    "percent": ("redis://user:QX%ZJV@127.0.0.1:1/0", "QX%ZJV"),
    "all encoded": (f"redis://user:{ENCODED}@127.0.0.1:1/0", PASSWORD),
    "all unencoded": (f"redis://user:{PASSWORD}@127.0.0.1:1/0", PASSWORD),
    "query": ("redis://127.0.0.1:1/0?password=QX@ZJV&db=1", "QX@ZJV"),
    "query unencoded": ("redis://127.0.0.1:1/0?password=QX&Z#JV", "QX&Z#JV"),
    "tls": (f"rediss://user:{ENCODED}@127.0.0.1:1/0?ssl_cert_reqs=required", PASSWORD),
    "unix socket": ("unix:///nonexistent/redis.sock?db=0&password=QXZJV", "QXZJV"),
    "unix socket user part": ("unix://:QXZJV@/nonexistent/redis.sock", "QXZJV"),
    "bad port": ("redis://:QXZJV@127.0.0.1:notaport/0", "QXZJV"),
    "bad scheme": ("http://:QXZJV@127.0.0.1:1/0", "QXZJV"),
    "a query in the password": ("redis://u:QX?pwd=ZJ@127.0.0.1:1/0", "QX?pwd=ZJ"),
}

# Database URLs no server answers, each with its password.
UNREACHABLE_DATABASES = {
    "encoded": (f"postgresql+psycopg2://u:{ENCODED}@127.0.0.1:1/db", PASSWORD),
    "at sign": ("postgresql+psycopg2://u:QX@ZJV@127.0.0.1:1/db", "QX@ZJV"),
    "slash, hash, question mark": ("postgresql+psycopg2://u:Q/X#Z?J@127.0.0.1:1/db", "Q/X#Z?J"),
    "query": ("postgresql+psycopg2://u@127.0.0.1:1/db?password=QXZJV", "QXZJV"),
    "socket and query": ("postgresql+psycopg2:///db?host=/nonexistent&password=QXZJV", "QXZJV"),
    "bad port": ("postgresql+psycopg2://u:QXZJV@127.0.0.1:notaport/db", "QXZJV"),
    "bad driver": ("nope://u:QXZJV@127.0.0.1:1/db", "QXZJV"),
}


def assert_hidden(text: str, password: str) -> None:
    """No piece of ``password`` (3 characters or more), as written or percent-encoded, is in
    ``text``."""
    for form in {password, quote(password, safe=""), quote(password)}:
        for start in range(len(form) - 2):
            assert form[start : start + 3] not in text, (form, text)


@pytest.fixture
def in_process(ezgraph_here: EzgraphHere, tmp_path: Path) -> Callable[..., tuple[int, str]]:
    """The ``ezgraph`` command against ``redis_url`` and ``database_url``: its exit code and
    all it printed."""

    def run(*args: str, redis_url: str = "", database_url: str = "") -> tuple[int, str]:
        env = {
            "REDIS_URL": redis_url or "redis://127.0.0.1:1/0",
            "DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'db'}",
            "EZGRAPH_MODULES": CHAIN,
            "EZGRAPH_HOME": str(tmp_path / "home"),  # never start a server
        }
        done = ezgraph_here(*args, env=env)
        return done.returncode, done.stdout + done.stderr

    return run


@pytest.mark.parametrize("case", list(UNREACHABLE_REDIS))
def test_commands_show_no_piece_of_the_redis_password(
    case: str, in_process: Callable[..., tuple[int, str]]
) -> None:
    url, password = UNREACHABLE_REDIS[case]
    for args in (("submit", "a", "-f", "x=1"), ("status", "0" * 32), ("worker",), ("queues",)):
        code, printed = in_process(*args, redis_url=url)
        assert code == 1, printed
        assert printed.startswith(("error: invalid Redis URL", "error: cannot reach Redis at"))
        assert len(printed.splitlines()) == 1, printed
        assert_hidden(printed, password)


@pytest.mark.parametrize("case", list(UNREACHABLE_DATABASES))
def test_commands_show_no_piece_of_the_database_password(
    case: str, in_process: Callable[..., tuple[int, str]]
) -> None:
    url, password = UNREACHABLE_DATABASES[case]
    code, printed = in_process("init-db", database_url=url)
    assert code == 1, printed
    assert printed.startswith(("error: invalid database URL", "error: database ")), printed
    assert len(printed.splitlines()) == 1, printed
    assert "Traceback" not in printed
    assert_hidden(printed, password)


def test_a_password_that_would_be_misread_is_refused_in_one_line(
    in_process: Callable[..., tuple[int, str]],
) -> None:
    """urllib ends the host part at an unencoded / ? or #: the client would try another host
    or port (with a piece of the password); ezgraph says what to do instead."""
    code, printed = in_process("status", "0" * 32, redis_url="redis://u:QX#ZJV@redis.lan:6379/0")
    assert code == 1
    assert printed == (
        "error: invalid Redis URL redis://u:***@redis.lan:6379/0: its password holds / ? or #"
        " unencoded: percent-encode the password (urllib.parse.quote(password, safe=''))\n"
    )


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A private valkey-server whose user ``ez`` has the password :data:`PASSWORD`."""
    with acl_server(
        binaries()["valkey"], tmp_path / "server", f"user ez on >{PASSWORD} ~* &* +@all\n"
    ) as port:
        yield port


def test_a_refused_password_is_shown_by_no_command(
    locked_redis: int, in_process: Callable[..., tuple[int, str]], sqlite_url: str
) -> None:
    port = locked_redis
    wrong = PASSWORD[::-1]
    urls = [
        f"redis://ez:{quote(wrong, safe='')}@127.0.0.1:{port}/0",
        f"redis://:{quote(wrong, safe='')}@127.0.0.1:{port}/0",
        f"redis://ez:WR@NG:QX@127.0.0.1:{port}/0",  # @ and : unencoded: redis-py reads them
        f"redis://127.0.0.1:{port}/0?username=ez&password={quote(wrong, safe='')}",
    ]
    for url in urls:
        for args in (("submit", "a"), ("status", "0" * 32), ("worker",), ("queues",)):
            code, printed = in_process(*args, redis_url=url)
            assert code == 1, printed
            assert printed.startswith("error: Redis at "), printed
            assert "refused the credentials" in printed, printed
            assert_hidden(printed, wrong)
            assert_hidden(printed, "WR@NG:QX")
    # As a user runs it, with -v: one line still.
    env = subprocess_env(
        Settings(redis_url=urls[0], database_url=sqlite_url, modules_package=CHAIN)
    )
    done = ezgraph_cli("-v", "worker", env=env)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert_hidden(done.stdout + done.stderr, wrong)


@pytest.mark.slow
def test_a_worker_logs_no_password_while_redis_turns_it_away(
    locked_redis: int, sqlite_url: str
) -> None:
    """A worker whose password stops working (rotated on the server, its connections killed)
    logs that Redis refuses it, never the password; given it back, it goes on."""
    port = locked_redis
    admin = Redis(port=port, password=ADMIN)
    url = f"redis://ez:{ENCODED}@127.0.0.1:{port}/0"
    settings = Settings(redis_url=url, database_url=sqlite_url, modules_package=CHAIN)
    env = subprocess_env(settings)
    worker = ezgraph_process("-v", "worker", env=env)
    try:
        wait_for(lambda: bool(admin.keys("ezgraph:alive:*")), 30, "the worker")
        admin.acl_setuser("ez", enabled=True, reset_passwords=True, passwords=["+another"])
        admin.client_kill_filter(user="ez")
        time.sleep(3)  # heartbeats, maintenance passes and claims fail meanwhile
        admin.acl_setuser("ez", enabled=True, reset_passwords=True, passwords=[f"+{PASSWORD}"])
        done = ezgraph_cli("submit", "a", "--wait", "--timeout", "30", env=env)
        assert done.returncode == 0, done.stderr
    finally:
        logged = stop(worker)
    assert "invalid username-password pair" in logged or "WRONGPASS" in logged, logged[-2000:]
    assert_hidden(logged, PASSWORD)


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM ``process`` and return its stderr; kill it if it is still there 30 s later."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("the process ignored SIGTERM for 30 s") from None


# -- process titles -------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def command_lines(pids: list[int]) -> set[str]:
    """What ``ps`` shows for each process of ``pids`` and those under them: its command line,
    or the title a process gave itself (setproctitle writes it there)."""
    seen = set()
    for root in pids:
        for pid in descendants(root):
            try:
                seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return seen


@pytest.mark.slow
def test_no_process_shows_the_password_on_its_command_line(
    locked_redis: int, sqlite_url: str
) -> None:
    """ezgraph worker, ezgraph chaos's workers, a stock rq worker and its work-horse, and the
    Procfile's dashboard (rq-dashboard inside): the URL goes by the environment, never by an
    argument (nor into what they log)."""
    port = locked_redis
    url = f"redis://ez:{ENCODED}@127.0.0.1:{port}/0"
    env = subprocess_env(
        Settings(redis_url=url, database_url=sqlite_url, modules_package=SLOW), RQ_REDIS_URL=url
    )
    dashboard_port = free_port()
    procfile = (ROOT / "Procfile").read_text()
    dashboard = re.search(r"^dashboard: (.*)$", procfile, re.MULTILINE)
    assert dashboard is not None
    line = dashboard.group(1).replace("9181", str(dashboard_port))
    line = line.replace("rq-dashboard", f"{sys.executable} -m rq_dashboard")
    line = line.replace("ezgraph ", f"{sys.executable} -m ezgraph ")
    processes: list[subprocess.Popen[Any]] = [
        ezgraph_process("-v", "worker", "b", env=env),
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "a"],  # forks a work-horse per step
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,  # RQ logs there
            stderr=subprocess.STDOUT,
            text=True,
        ),
        ezgraph_process("chaos", "-n", "30", "-w", "1", "--every", "600", env=env),
        subprocess.Popen(
            ["sh", "-c", line],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    seen: set[str] = set()
    logged: list[str] = []  # what the workers and the audit wrote on stderr
    try:
        for _ in range(2):  # steps of 1.5 s: the stock worker forks a work-horse for each
            assert ezgraph_cli("submit", "a", "-f", "sleep:=1.5", env=env).returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _dashboard_answers(dashboard_port):
            seen |= command_lines([p.pid for p in processes])
            time.sleep(0.1)
        assert _dashboard_answers(dashboard_port), "the Procfile's dashboard did not reach Redis"
        for _ in range(30):
            seen |= command_lines([p.pid for p in processes])
            time.sleep(0.1)
    finally:
        os.killpg(processes[-1].pid, signal.SIGTERM)  # the shell and the dashboard
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in processes:
            try:
                logged += [text or "" for text in proc.communicate(timeout=30)]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    shown = "\n".join(seen)
    assert "ezgraph dashboard" in shown and "rq.cli worker" in shown and "chaos" in shown, shown
    assert_hidden(shown, PASSWORD)
    assert "Job OK" in "".join(logged), logged  # the stock worker ran steps (in work-horses)
    assert_hidden("".join(logged), PASSWORD)


def _dashboard_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/rq/0/data/queues.json", timeout=2):
            return True
    except OSError:
        return False
