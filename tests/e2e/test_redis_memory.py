"""Redis at its memory limit (issue 17, item 6): with ``noeviction`` a submit fails in one line
and writes nothing, workers wait for memory rather than fail runs; a policy that evicts keys is
refused by every worker and named by ``ezgraph check``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings

from ..conftest import ezgraph_cli, ezgraph_process, subprocess_env, wait_for


def fill(server: Redis) -> int:
    """Write filler keys until Redis refuses even a small one for lack of memory (big ones
    first; a refused big one leaves room for small ones); returns how many."""
    written = 0
    for size in (256_000, 4_000, 100):
        while True:
            try:
                server.set(f"filler:{written}", b"x" * size)
            except OutOfMemoryError:
                break
            written += 1
    return written


def on_private(port: int, sqlite_url: str, package: str) -> Settings:
    """Settings of a test graph on the private server at ``port``."""
    return Settings(
        redis_url=f"redis://127.0.0.1:{port}/0", database_url=sqlite_url, modules_package=package
    )


def limited(port: int, policy: str = "noeviction") -> Redis:
    server = Redis(port=port)
    server.config_set("maxmemory", str(server.info("memory")["used_memory"] + 8_000_000))
    server.config_set("maxmemory-policy", policy)
    return server


@pytest.mark.slow
def test_at_maxmemory_submit_fails_in_one_line_and_workers_wait_for_memory(
    private_redis: Callable[[], subprocess.Popen[bytes]], sqlite_url: str, redis_url: str
) -> None:
    private_redis()
    port = private_redis.port  # type: ignore[attr-defined]
    settings = on_private(port, sqlite_url, "tests.graphs.slowchain")
    server = limited(port)
    context = Context(settings)
    orchestrator = GraphOrchestrator(context=context)
    payload = {"sleep": 0.5, "ledger_url": redis_url, "ledger_key": "test:ledger"}
    run_ids = [orchestrator.submit("a", payload) for _ in range(3)]
    worker = ezgraph_process("worker", env=subprocess_env(settings))
    try:
        wait_for(lambda: server.llen("rq:queue:a") < 3, 30, "the worker to take a step")
        fill(server)
        # Below what is used: runs that expire meanwhile do not make room for the submit.
        server.config_set("maxmemory", str(server.info("memory")["used_memory"] - 2_000_000))
        refused = ezgraph_cli("submit", "a", "-f", "sleep:=0", env=subprocess_env(settings))
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"error: Redis at 127.0.0.1:{port} is out of memory (maxmemory): nothing was"
            " written; free memory or raise maxmemory, then try again"
        ]
        runs = {key.split(b":")[2] for key in server.scan_iter(context.keys.run("*"))}
        assert runs == {r.encode() for r in run_ids}  # the refused run wrote nothing
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=3)  # the worker waits for memory, it does not exit
        assert all(orchestrator.status(r)["status"] != "failed" for r in run_ids)
        for key in server.scan_iter("filler:*", count=1_000):
            server.delete(key)
        wait_for(
            lambda: all(orchestrator.status(r)["status"] == "finished" for r in run_ids),
            60,
            "the runs to finish once memory is free",
        )
    finally:
        worker.terminate()
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors
    assert "maxmemory" in errors  # it said Redis was full, and went on
    assert "Traceback" not in errors, errors


def test_a_redis_that_evicts_keys_is_refused_by_workers_and_named_by_check(
    private_redis: Callable[[], subprocess.Popen[bytes]], sqlite_url: str
) -> None:
    private_redis()
    port = private_redis.port  # type: ignore[attr-defined]
    settings = on_private(port, sqlite_url, "tests.graphs.chain")
    env = subprocess_env(settings)
    line = (
        "error: Redis evicts keys at maxmemory (maxmemory-policy allkeys-lru): it would lose"
        " queued runs silently; set maxmemory-policy noeviction"
    )
    assert "redis: maxmemory-policy noeviction" in ezgraph_cli("check", env=env).stdout
    limited(port, "allkeys-lru")
    for command in (("worker", "--burst"), ("check",)):
        result = ezgraph_cli(*command, env=env)
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines()[-1] == line
        assert "Traceback" not in result.stderr
