"""Each Lua script, called through its typed request (state/protocol.py) on a real Redis: what
it replies and what it leaves in Redis. The scripts read their arguments by name, so a field
added, removed or moved on one side shows here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.completion import Attempt, StepRun
from ezgraph.context import Context
from ezgraph.errors import UsageError
from ezgraph.flow import StepResult, plan
from ezgraph.model.step_job import StepJob
from ezgraph.state.keys import Keys
from ezgraph.state.protocol import (
    Claim,
    Completion,
    CompletionRequest,
    Failure,
    Finished,
    Outcome,
    join_input_spec,
)

CHAIN = "tests.graphs.chain"
DIAMOND = "tests.graphs.diamond"


def completion_of(
    context: Context, run_id: str, node: str, output: dict[str, object]
) -> CompletionRequest:
    """What recording ``node`` of ``run_id`` as having returned ``output`` sends."""
    graph = context.graph()
    job = StepJob(run_id, node, graph.package, state={})
    planned = plan(graph, job, StepResult(output), output)
    completion = Completion(
        run_id, node, node, "", json.dumps(output), json.dumps(output), "", "", 0, "", "", "w", 1
    )
    jobs = tuple(context.jobs.build(graph, step) for step in planned.jobs)
    return CompletionRequest(completion, jobs, planned.walk, output)


def claim(worker: str, batch: int = 8) -> Claim:
    return Claim(worker, 240, "exec-", batch, 3000, 1000)


def test_submit_run_creates_the_run_and_its_first_job_once(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"q": 1}, run_id="r1")
    header = redis_conn.hgetall(context.keys.run(run_id))
    assert header[b"status"] == b"queued" and header[b"start"] == b"a"
    assert json.loads(header[b"input"]) == {"q": 1} and header[b"pending"] == b"1"
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [b"r1-a"]
    assert context.runs.live() == ["r1"]
    with pytest.raises(UsageError, match="exists already"):
        orchestrator.submit("a", {"q": 2}, run_id="r1")
    assert redis_conn.llen("rq:queue:a") == 1  # the same id again creates nothing
    assert json.loads(redis_conn.hget(context.keys.run(run_id), "input") or b"") == {"q": 1}


def test_complete_step_records_once_and_creates_the_ready_successor(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r2")
    request = completion_of(context, run_id, "a", {"a": True})
    assert context.runs.complete(request) == Outcome("ok", False)
    assert context.runs.complete(request) == Outcome("duplicate", False)
    assert redis_conn.lrange("rq:queue:b", 0, -1) == [b"r2-b"]
    steps = redis_conn.hgetall(context.keys.steps(run_id))
    assert steps[b"a.status"] == b"finished" and json.loads(steps[b"a.output"]) == {"a": True}
    assert steps[b"b.status"] == b"queued" and steps[b"b.job"] == b"r2-b"
    gone = completion_of(context, "no-such-run", "a", {})
    assert context.runs.complete(gone) == Outcome("gone", False)


def test_complete_step_fails_a_run_whose_graph_plans_no_job_for_a_ready_step(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A worker whose graph differs from the run's (a deploy while it waits): the step the
    walk makes ready has no planned job, so the run fails with a line naming it."""
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r3")
    request = completion_of(context, run_id, "a", {"a": True})
    request = CompletionRequest(request.completion, (), request.walk, request.output)
    assert context.runs.complete(request) == Outcome("ok", True)
    header = redis_conn.hgetall(context.keys.run(run_id))
    assert header[b"status"] == b"failed"
    assert b"step b became ready, but this worker's graph plans no job for it" in header[b"error"]
    assert redis_conn.llen("rq:queue:b") == 0


def test_fail_step_stops_the_run_and_cancels_what_waits(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(DIAMOND)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r4")
    assert context.runs.complete(completion_of(context, run_id, "a", {})) == Outcome("ok", False)
    failure = Failure(run_id, "b", "b: ValueError: no", "ValueError: no\n\ntrace", "", "w", 1, "{}")
    assert context.runs.fail_step(failure) == Outcome("ok", True)  # c is canceled: nothing left
    assert context.runs.fail_step(failure) == Outcome("duplicate", False)
    steps = redis_conn.hgetall(context.keys.steps(run_id))
    assert steps[b"b.status"] == b"failed" and steps[b"b.error"].startswith(b"ValueError: no")
    assert steps[b"c.status"] == b"canceled"
    assert redis_conn.hget("rq:job:r4-c", "status") == b"canceled"
    assert redis_conn.hget(context.keys.run(run_id), "error") == b"b: ValueError: no"


def test_cancel_run_ends_a_live_run_and_refuses_an_ended_one(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r5")
    assert context.runs.cancel(run_id, "run canceled") == Outcome("ok", True)
    assert redis_conn.hget(context.keys.run(run_id), "status") == b"canceled"
    assert redis_conn.zrange("rq:canceled:a", 0, -1) == [b"r5-a"]
    assert context.runs.cancel(run_id, "run canceled") == Outcome("refused", False)
    assert context.runs.cancel("nope", "run canceled") == Outcome("gone", False)


def test_finish_and_claim_claims_finishes_and_records_in_one_call(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r6")
    outcomes, claimed = context.runs.finish_and_claim(claim("w1"), ["a"], [])
    assert outcomes == [] and [c.job_id for c in claimed] == [b"r6-a"]
    assert claimed[0].queue == b"a" and claimed[0].data and claimed[0].join_input is None
    assert redis_conn.lrange(Keys().claimed("w1"), 0, -1) == [b"r6-a"]
    assert redis_conn.hget("rq:job:r6-a", "status") == b"started"
    request = completion_of(context, run_id, "a", {"a": True})
    finished = Finished("r6-a", "a", 60, "", "exec-1", repr(time.time()), 1)
    outcomes, claimed = context.runs.finish_and_claim(claim("w1"), ["b"], [(finished, request)])
    assert outcomes == [Outcome("ok", False)] and [c.job_id for c in claimed] == [b"r6-b"]
    assert redis_conn.hget("rq:job:r6-a", "status") == b"finished"
    assert redis_conn.lrange(Keys().claimed("w1"), 0, -1) == [b"r6-b"]
    _, nothing = context.runs.finish_and_claim(claim("w1"), ["a"], [])
    assert nothing == [] and redis_conn.exists(Keys().idle("a"))


def test_requeue_claims_gives_back_a_dead_workers_jobs_and_fails_a_repeated_killer(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    GraphOrchestrator(context=context).submit("a", run_id="r7")
    context.runs.finish_and_claim(claim("dead"), ["a"], [])
    assert context.runs.requeue_claims("dead", 3) == (["r7-a"], [])
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [b"r7-a"]
    assert redis_conn.hget("rq:job:r7-a", "status") == b"queued"
    redis_conn.hset("rq:job:r7-a", "ezgraph_lost", 3)
    context.runs.finish_and_claim(claim("dead2"), ["a"], [])
    assert context.runs.requeue_claims("dead2", 3) == ([], ["r7-a"])
    assert redis_conn.hget("rq:job:r7-a", "status") == b"failed"


def test_requeue_step_puts_a_lost_job_back_only_while_its_run_waits_for_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="r8")
    redis_conn.lpop("rq:queue:a")  # popped by a stock worker that died
    assert context.runs.requeue_step(run_id, "r8-a", "a", "started") is False  # still queued
    assert context.runs.requeue_step(run_id, "r8-a", "a", "queued") is True
    assert context.runs.requeue_step(run_id, "r8-a", "a", "queued") is False  # in its queue
    assert redis_conn.hget(context.keys.steps(run_id), "a.recovered") == b"1"


def test_enqueue_due_retries_moves_only_those_whose_delay_passed(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    GraphOrchestrator(context=context).submit("a", run_id="r9")
    redis_conn.lpop("rq:queue:a")
    redis_conn.hset("rq:job:r9-a", "status", "scheduled")
    redis_conn.zadd("rq:scheduled:a", {"r9-a": time.time() + 60})
    assert context.runs.enqueue_due_retries(["a"]) == 0
    redis_conn.zadd("rq:scheduled:a", {"r9-a": time.time() - 1})
    assert context.runs.enqueue_due_retries(["a"]) == 1
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [b"r9-a"]
    assert redis_conn.hget("rq:job:r9-a", "status") == b"queued"


def test_mark_saved_lets_a_written_run_expire_and_keeps_one_that_changed(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    orchestrator = GraphOrchestrator(context=context)
    for run_id in ("ra", "rb"):
        orchestrator.submit("a", run_id=run_id)
        context.runs.cancel(run_id, "run canceled")
    ended = {r: redis_conn.hget(context.keys.run(r), "ended_at").decode() for r in ("ra", "rb")}
    context.runs.mark_saved([("ra", ended["ra"]), ("rb", "another end")], 120)
    assert 0 < redis_conn.ttl(context.keys.run("ra")) <= 120
    assert redis_conn.ttl(context.keys.run("rb")) == -1
    assert context.runs.unsaved() == ["rb"]


def test_resume_run_requeues_a_failed_runs_failed_step(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(CHAIN)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="rc")
    context.runs.finish_and_claim(claim("w"), ["a"], [])
    failure = Failure(run_id, "a", "a: boom", "boom", "", "w", 1, "{}")
    assert context.runs.fail_step(failure) == Outcome("ok", True)
    redis_conn.hset("rq:job:rc-a", "status", "failed")
    resumed = context.runs.resume(run_id)
    assert (resumed.status, resumed.details) == ("ok", ("a",))
    assert redis_conn.hget(context.keys.run(run_id), "status") == b"running"
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [b"rc-a"]
    assert context.runs.resume(run_id).status == "status"
    assert context.runs.resume("nope").status == "gone"


def test_read_join_input_reads_what_the_join_merges(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(DIAMOND)
    run_id = GraphOrchestrator(context=context).submit("a", run_id="rd")
    for node in ("a", "b", "c"):
        request = completion_of(context, run_id, node, {node: True})
        context.runs.complete(request)
    graph = context.graph()
    spec = join_input_spec(run_id, graph.predecessors("d"), graph.join_state_sources("d"))
    read = context.runs.read_join_input(
        spec, graph.predecessors("d"), graph.join_state_sources("d"), 1000
    )
    assert read.statuses == {"b": "finished", "c": "finished"}
    assert read.outputs == {"b": '{"b": true}', "c": '{"c": true}'}
    step = StepRun(context, StepJob(run_id, "d", DIAMOND, reads_join_input=True), Attempt.of(None))
    request = step.call()
    assert request.completion.state and json.loads(request.completion.state) == {
        "b": True,
        "c": True,
        "trail": ["d"],
        "d": True,
    }


@pytest.mark.parametrize("chunk", [1000, 777])
def test_a_join_reads_the_outputs_of_a_wide_map_in_item_order_a_chunk_per_call(
    make_context: Callable[..., Context], redis_conn: Redis, chunk: int
) -> None:
    """Over Lua's unpack limit (~8,000 values: a 10,000-item map's gather once failed with
    "too many results to unpack"), read in chunks that split no item and lose none."""
    context = make_context("tests.graphs.mapped")
    count = 9_001
    steps = context.keys.steps("wide")
    redis_conn.hset(context.keys.join("wide"), "mapn:square", count)
    outputs = {f"square-{i}.output": json.dumps({"value": i}) for i in range(count)}
    redis_conn.hset(steps, mapping={"square.status": "finished", **outputs})
    graph = context.graph()
    predecessors, states = graph.predecessors("collect"), graph.join_state_sources("collect")
    spec = join_input_spec("wide", predecessors, states)
    read = context.runs.read_join_input(spec, predecessors, states, chunk)
    assert read.mapped["square"] == [json.dumps({"value": i}) for i in range(count)]


def test_the_lua_key_names_are_keys_py(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """prelude.lua builds ezgraph's key names as state/keys.py does."""
    context = make_context(CHAIN)
    source = context.scripts._scripts["read_join_input"].script
    prelude = source[
        : source.index("-- What a join reads of its predecessors (run.read_join_input)")
    ]
    body = (
        "return {key.run('R'), key.steps('R'), key.state('R'), key.join('R'), key.jobs('R'),"
        " key.events('R'), key.signals('R'), key.stopped('R'), key.alive('W'), key.claimed('W'),"
        " key.idle('Q'), key.wake('Q'), key.live_runs, key.unsaved_runs, key.expiring_runs,"
        " key.workers, key.idempotency('K'), key.waiting_steps}"
    )
    names = redis_conn.eval(prelude + body, 0, "pfx", "rq:", "now", "0")
    keys = Keys("pfx")
    expected = [
        *keys.run_keys("R"),
        keys.stopped("R"),
        keys.alive("W"),
        keys.claimed("W"),
        keys.idle("Q"),
        keys.wake("Q"),
        keys.live_runs,
        keys.unsaved_runs,
        keys.expiring_runs,
        keys.workers,
        keys.idempotency("K"),
        keys.waiting_steps,
    ]
    assert [name.decode() for name in names] == expected
