"""Submitting runs: in bulk, from the module-level API, and once per idempotency key, on a real
Redis and a real database."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import ezgraph
from ezgraph import client
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import PayloadError, SubmitInterrupted, UsageError
from ezgraph.handover import RunWriter
from ezgraph.settings import TUNING, Settings
from ezgraph.state.redis_io import ScriptRunner

from ..conftest import drain

CHAIN = "tests.graphs.chain"
SMALL_CHUNKS = dataclasses.replace(TUNING, submit_chunk=3)


def queued_ids(redis_conn: Redis, queue: str) -> list[str]:
    return [job.decode().rsplit("-", 1)[0] for job in redis_conn.lrange(f"rq:queue:{queue}", 0, -1)]


def test_submit_many_creates_every_run_in_order_in_chunks(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN, tuning=SMALL_CHUNKS)
    orchestrator = GraphOrchestrator(context=context)
    run_ids = orchestrator.submit_many("a", ({"n": n} for n in range(10)))
    assert len(set(run_ids)) == 10 and all(len(r) == 32 for r in run_ids)
    assert queued_ids(redis_conn, "a") == run_ids  # 4 calls of at most 3 runs, in order
    for n, run_id in enumerate(run_ids):
        assert json.loads(redis_conn.hget(context.keys.run(run_id), "input") or b"") == {"n": n}
    drain(context)
    assert [orchestrator.status(r)["result"]["n"] for r in run_ids] == list(range(10))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1, 2], r"payloads\[4\] must be a JSON object, got list"),
        ({"x": {1, 2}}, r"payloads\[4\] is not JSON-serializable"),
        ({"x": "y" * 2000}, r"payloads\[4\] is \d+ bytes, over the 1000-byte limit"),
    ],
)
def test_submit_many_with_a_bad_payload_submits_nothing(
    make_context: Callable[..., Context], redis_conn: Redis, bad: Any, message: str
) -> None:
    context = make_context(CHAIN, tuning=SMALL_CHUNKS, max_payload_bytes=1000)
    payloads = [{"n": n} for n in range(8)]
    payloads[4] = bad
    with pytest.raises(PayloadError, match=message):
        GraphOrchestrator(context=context).submit_many("a", payloads)
    assert redis_conn.llen("rq:queue:a") == 0 and context.runs.live() == []


def test_submit_many_to_an_unknown_node_or_with_a_bad_key_submits_nothing(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    orchestrator = GraphOrchestrator(context=make_context(CHAIN))
    with pytest.raises(UsageError, match="unknown start module 'zz'"):
        orchestrator.submit_many("zz", [{}])
    with pytest.raises(UsageError, match="idempotency key must be 1 to 200 characters"):
        orchestrator.submit_many("a", [{}, {}], idempotency_keys=["k", ""])
    with pytest.raises(UsageError, match="1 idempotency keys for 2 payloads"):
        orchestrator.submit_many("a", [{}, {}], idempotency_keys=["k"])
    assert redis_conn.llen("rq:queue:a") == 0


@pytest.fixture
def seed_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_conn: Redis, tmp_path: Path
) -> Settings:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'seed.db'}")
    monkeypatch.setenv("EZGRAPH_MODULES", CHAIN)
    return Settings.from_env()


def test_module_level_submit_reuses_one_orchestrator_per_process_and_settings(
    seed_env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_id = ezgraph.submit("a", {"q": 1}, user="ana")
    kept = client.shared()
    assert client.shared() is kept and client.shared(seed_env) is kept
    assert ezgraph.status(run_id)["status"] == "queued" and client.shared() is kept
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert client.shared() is not kept  # other settings, another orchestrator
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new process builds its own, on connections of its own
        try:
            monkeypatch.setenv("DATABASE_URL", seed_env.database_url)
            child_run = ezgraph.submit("a", q=2)
            ok = client.shared() is not kept and ezgraph.status(child_run)["status"] == "queued"
            os.write(write, f"{int(ok)} {child_run}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, code = os.waitpid(pid, 0)
    ok, child_run = os.read(read, 100).decode().split()
    os.close(read)
    assert code == 0 and ok == "1"
    assert client.shared(seed_env) is kept  # the parent's still works after the fork
    assert kept.status(child_run)["status"] == "queued"


def end_and_forget(context: Context, redis_conn: Redis, run_ids: list[str]) -> None:
    """Run the queued runs to their end, write them to SQL, and drop every key of theirs from
    Redis, as their expiry does."""
    drain(context)
    RunWriter(context, "test").write_unsaved()
    for run_id in run_ids:
        key = redis_conn.hget(context.keys.run(run_id), "idempotency_key")
        assert key is not None and redis_conn.ttl(context.keys.idempotency(key.decode())) > 0
        redis_conn.delete(*context.keys.run_keys(run_id), context.keys.idempotency(key.decode()))


def test_an_idempotency_key_gives_one_run_while_live_and_after_from_sql(
    make_context: Callable[..., Context], redis_conn: Redis, database_url: str
) -> None:
    context = make_context(CHAIN, database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    first = orchestrator.submit("a", {"q": 1}, idempotency_key="order-17")
    assert orchestrator.submit("a", {"q": 2}, idempotency_key="order-17") == first
    assert orchestrator.submit("a", {"q": 3}, idempotency_key="order-18") != first
    assert redis_conn.llen("rq:queue:a") == 2
    end_and_forget(context, redis_conn, [first])
    assert orchestrator.submit("a", {"q": 4}, idempotency_key="order-17") == first  # from SQL
    assert redis_conn.llen("rq:queue:a") == 0 and context.runs.live() == []
    assert orchestrator.status(first)["result"]["q"] == 1
    assert not redis_conn.exists(context.keys.idempotency("order-17"))  # its claim let go


def test_keys_in_bulk_give_one_run_per_key_even_within_a_chunk(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN, tuning=SMALL_CHUNKS)
    orchestrator = GraphOrchestrator(context=context)
    early = orchestrator.submit("a", idempotency_key="k0")
    keys = ["k0", "k1", "k1", "k2", "k3", "k2", "k4"]
    run_ids = orchestrator.submit_many("a", [{"n": n} for n in range(7)], idempotency_keys=keys)
    assert run_ids[0] == early and run_ids[1] == run_ids[2] and run_ids[3] == run_ids[5]
    assert len(set(run_ids)) == 5 and redis_conn.llen("rq:queue:a") == 5
    end_and_forget(context, redis_conn, list(set(run_ids)))
    again = orchestrator.submit_many("a", [{}] * 7, idempotency_keys=keys)
    assert again == run_ids and redis_conn.llen("rq:queue:a") == 0


def test_a_submitter_waits_for_another_s_claim_on_its_key(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A claim held by a submitter that died between its two calls expires; the next one then
    creates the run."""
    context = make_context(CHAIN)
    redis_conn.set(context.keys.idempotency("k"), "claim dead-submitter", px=300)
    run_id = GraphOrchestrator(context=context).submit("a", idempotency_key="k")
    assert redis_conn.get(context.keys.idempotency("k")) == run_id.encode()
    assert context.runs.live() == [run_id]


def submit_concurrently(context: Context, key: str, n: int) -> set[str]:
    barrier = threading.Barrier(n)

    def one(_: int) -> str:
        barrier.wait()
        return GraphOrchestrator(context=context).submit("a", idempotency_key=key)

    with ThreadPoolExecutor(n) as pool:
        return set(pool.map(one, range(n)))


def test_concurrent_submitters_with_one_key_start_one_run(
    make_context: Callable[..., Context], redis_conn: Redis, database_url: str
) -> None:
    context = make_context(CHAIN, database_url=database_url)
    (run_id,) = submit_concurrently(context, "live", 8)
    assert context.runs.live() == [run_id] and redis_conn.llen("rq:queue:a") == 1
    end_and_forget(context, redis_conn, [run_id])
    assert submit_concurrently(context, "live", 8) == {run_id}  # each one from SQL
    assert context.runs.live() == [] and redis_conn.llen("rq:queue:a") == 0


def test_a_pipelined_chunk_whose_reply_is_lost_is_answered_once_when_sent_again(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks are in flight at once; the reply of one that Redis ran is lost (its
    connection drops): both are sent again, answered with their kept replies, and every run is
    created once, in order."""
    context = make_context(CHAIN, tuning=SMALL_CHUNKS)
    receive = ScriptRunner._receive
    calls = iter(range(100))

    def drop_the_second_reply(self: ScriptRunner) -> Any:
        reply = receive(self)
        if next(calls) == 1:
            raise RedisConnectionError("connection dropped (injected)")
        return reply

    monkeypatch.setattr(ScriptRunner, "_receive", drop_the_second_reply)
    run_ids = GraphOrchestrator(context=context).submit_many("a", [{"n": n} for n in range(10)])
    assert next(calls) > 4  # sent again, then the rest pipelined
    assert len(set(run_ids)) == 10 and queued_ids(redis_conn, "a") == run_ids
    assert sorted(context.runs.live()) == sorted(run_ids)


def test_a_bulk_submission_redis_fails_part_way_says_which_runs_were_submitted(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies stop coming after the first chunk's: the runs of that chunk were submitted,
    those of the two chunks in flight may have been (here they were), none after."""
    context = make_context(CHAIN, tuning=dataclasses.replace(SMALL_CHUNKS, client_patience=0.2))
    receive = ScriptRunner._receive
    calls = iter(range(100))

    def answer_once(self: ScriptRunner) -> Any:
        reply = receive(self)
        if next(calls) >= 1:
            raise RedisConnectionError("connection dropped (injected)")
        return reply

    monkeypatch.setattr(ScriptRunner, "_receive", answer_once)
    with pytest.raises(SubmitInterrupted) as caught:
        GraphOrchestrator(context=context).submit_many("a", [{"n": n} for n in range(12)])
    error = caught.value
    assert "of 12 runs, the first 3 were submitted, the 6 after them may have been" in str(error)
    assert len(error.run_ids) == 3 and len(error.unsure) == 6
    monkeypatch.undo()
    assert queued_ids(redis_conn, "a")[:3] == error.run_ids
    assert set(context.runs.live()) <= set(error.run_ids + error.unsure)  # none of the rest
