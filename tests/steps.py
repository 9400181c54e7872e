"""Step functions the test graphs run (importable by worker subprocesses as tests.steps)."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from typing import Any

from redis import Redis
from rq import Worker
from rq.job import Job

from ezgraph import Map, Route, Wait, current_step
from ezgraph.rq_compat import RQ_PREFIX, worker_executions_key


def mark(data: dict[str, Any]) -> dict[str, Any]:
    """Record this step in the trail; the output names the step."""
    step = current_step().step
    return {step: True, "trail": [*data.get("trail", []), step]}


def wait_for_approval(data: dict[str, Any]) -> Wait:
    """Wait for signal ``approval`` (``wait_timeout`` seconds, when given); counts its calls in
    the payload's ``ledger_key`` list when given."""
    if data.get("ledger_key"):
        ledger = Redis.from_url(data["ledger_url"])
        ledger.rpush(data["ledger_key"], f"{current_step().run_id}:gate")
        ledger.close()
    output = {**mark(data), "asked": "ok?"}
    return Wait(data.get("wait_name", "approval"), output, timeout=data.get("wait_timeout"))


def fail(data: dict[str, Any]) -> dict[str, Any]:
    """Always raise (with the payload's ``detail`` after the message, when given)."""
    raise ValueError(f"boom in {current_step().step}{data.get('detail', '')}")


def not_a_dict(data: dict[str, Any]) -> Any:
    """Break the contract: return a list."""
    return [1, 2, 3]


def unserializable(data: dict[str, Any]) -> dict[str, Any]:
    """Return something JSON cannot hold."""
    return {"when": object()}


def route_by_field(data: dict[str, Any]) -> Route:
    """Route to the successors the payload names in ``route``."""
    return Route(data["route"], {"routed": data["route"]})


def map_items(data: dict[str, Any]) -> Map:
    """Fan ``square`` out over the payload's ``items``."""
    return Map("square", data["items"], {"mapped": len(data["items"])})


def square(data: dict[str, Any]) -> dict[str, Any]:
    """Square this instance's item (times the run's ``scale``: its mapper's state)."""
    return {"value": data["item"] ** 2 * data.get("scale", 1)}


def collect(data: dict[str, Any]) -> dict[str, Any]:
    """The join after a map: sum the mapped outputs, keep their order."""
    values = [out["value"] for out in data.get("square", [])]
    return {"values": values, "total": sum(values), "outputs": current_step().outputs}


def ledger(data: dict[str, Any]) -> dict[str, Any]:
    """Count each execution in a Redis list named by the payload (to prove once-only runs)."""
    ctx = current_step()
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
    return {ctx.step: "ran"}


def slow(data: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``sleep`` seconds, then mark the step."""
    time.sleep(float(data.get("sleep", 0.2)))
    return {current_step().step: os.getpid()}


def slow_ledger(data: dict[str, Any]) -> dict[str, Any]:
    """Count this execution in the payload's Redis ledger, then sleep ``sleep`` seconds."""
    ctx = current_step()
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
    time.sleep(float(data.get("sleep", 0.2)))
    return {ctx.step: os.getpid()}


def fail_until_attempt(data: dict[str, Any]) -> dict[str, Any]:
    """Raise until the step's attempt number reaches the payload's ``succeed_on``."""
    ctx = current_step()
    if ctx.attempt < int(data["succeed_on"]):
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"succeeded_on": ctx.attempt}


def hang(data: dict[str, Any]) -> dict[str, Any]:
    """Sleep far past any sensible timeout."""
    time.sleep(60)
    return {}


def ledger_or_die(data: dict[str, Any]) -> dict[str, Any]:
    """Count this execution in the payload's ledger, then, for a ``doomed`` payload, kill this
    process (as an OOM kill or a segfault in the module would)."""
    ctx = current_step()
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
    if data.get("doomed"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {ctx.step: "ran"}


def call_sys_exit(data: dict[str, Any]) -> dict[str, Any]:
    """End the process the way a script would."""
    sys.exit()


def raise_system_exit(data: dict[str, Any]) -> dict[str, Any]:
    """End the process with a status."""
    raise SystemExit(3)


def raise_keyboard_interrupt(data: dict[str, Any]) -> dict[str, Any]:
    """Pretend Ctrl-C was pressed."""
    raise KeyboardInterrupt


def fork_and_return(data: dict[str, Any]) -> dict[str, Any]:
    """Fork, and return in both processes (the child would go on as a worker)."""
    child = os.fork()
    return {"forked": child != 0, "pid": os.getpid()}


def ignore_the_timeout(data: dict[str, Any]) -> dict[str, Any]:
    """Run for ever, catching whatever is raised to stop it (the timeout included)."""
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], str(os.getpid()))
    while True:
        with contextlib.suppress(BaseException):  # the point of this module
            time.sleep(60)


def observe_rq(data: dict[str, Any]) -> dict[str, Any]:
    """Record, under ``test:observed:<job id>`` in the payload's Redis, what RQ's storage holds
    for this step's job and its worker while it runs: raw keys, and what RQ's code reads."""
    ctx = current_step()
    redis = Redis.from_url(data["ledger_url"])
    job_id = f"{ctx.run_id}-{ctx.step}"
    job = redis.hgetall(f"{RQ_PREFIX}job:{job_id}")
    worker = job[b"worker_name"].decode()
    wip = redis.zrange(f"{RQ_PREFIX}wip:{job[b'origin'].decode()}", 0, -1)
    members = [m for m in wip if m.startswith(f"{job_id}:".encode())]
    executions_key = f"{RQ_PREFIX}executions:{job_id}"
    rq_worker = Worker.find_by_key(f"{RQ_PREFIX}worker:{worker}", connection=redis)
    observed = {
        "job": job,
        "job_ttl": redis.ttl(f"{RQ_PREFIX}job:{job_id}"),
        "worker": redis.hgetall(f"{RQ_PREFIX}worker:{worker}"),
        "worker_executions": redis.smembers(worker_executions_key(worker)),
        "worker_executions_ttl": redis.ttl(worker_executions_key(worker)),
        "wip": members,
        "executions": {m: redis.hgetall(f"{RQ_PREFIX}execution:{m.decode()}") for m in members},
        "execution_ttls": [redis.ttl(f"{RQ_PREFIX}execution:{m.decode()}") for m in members],
        "job_executions": redis.zrange(executions_key, 0, -1),
        "job_executions_ttl": redis.ttl(executions_key),
        "current_job_id": rq_worker.get_current_job_id() if rq_worker else None,
        "rq_executions": [e.id for e in Job.fetch(job_id, connection=redis).get_executions()],
    }
    redis.set(f"test:observed:{job_id}", pickle.dumps(observed))
    return {ctx.step: True}


def report(data: dict[str, Any]) -> dict[str, Any]:
    """Report ``data["steps"]`` (default 3) progress events, then one event of its own."""
    step = current_step()
    total = int(data.get("steps", 3))
    for done in range(1, total + 1):
        step.progress(done, total, f"part {done}")
    step.emit({"type": "note", "text": data.get("text", "done")})
    return {"reported": total}


def misreport(data: dict[str, Any]) -> dict[str, Any]:
    """Emit an event naming its step itself (ezgraph sets it): the step fails."""
    current_step().emit({"step": "elsewhere"})
    return {}


def map_range(data: dict[str, Any]) -> Map:
    """Map ``item`` over ``range(n)``."""
    return Map("item", range(int(data["n"])))


def echo_item(data: dict[str, Any]) -> dict[str, Any]:
    """A no-op instance: its output is its item."""
    return {"i": data["item"]}


def gather_counted(data: dict[str, Any]) -> dict[str, Any]:
    """Count this execution in the payload's ledger; say whether the outputs came in order."""
    ctx = current_step()
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
    outputs = data["item"]
    in_order = all(output["i"] == n for n, output in enumerate(outputs))
    return {"count": len(outputs), "in_order": in_order}
