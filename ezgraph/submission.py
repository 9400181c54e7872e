"""Submitting runs: one or many, checked whole first, then sent in chunks of one Lua call each;
a run with an idempotency key is created once per key; a run may have a deadline and a step
budget (``max_steps``), from the call or the graph's ``DEADLINE`` and ``MAX_STEPS``.

A key is looked up in Redis (``idem:<key>``, while its run's keys are there) and in SQL (after):
the first call claims the key, the caller reads SQL, the second call creates the run if the
claim still holds (``submit_run.lua``). While one submitter holds a key's claim, another with
the same key waits for it, then gets the same run id.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .context import Context
from .errors import ConnectionFailed, PayloadError, UsageError
from .model.graph import Graph, valid_deadline, valid_max_steps
from .model.payload import to_json
from .model.records import MAX_NAME, MAX_RUN_ID
from .model.step_job import StepJob
from .settings import MAX_SECONDS
from .state.protocol import Action, NewRun, PlannedJob, Submission, Submitted

MAX_KEY_LENGTH = MAX_NAME  # the SQL column's width


@dataclass(frozen=True)
class NewRunPlan:
    """One run to submit, checked: its id, its payload and that payload as JSON, its key."""

    run_id: str
    payload: Mapping[str, Any]
    input: str
    key: str


@dataclass(frozen=True)
class Batch:
    """Runs of one graph from one start node, checked and ready to send."""

    graph: Graph
    start: str
    submission: Submission
    runs: tuple[NewRunPlan, ...]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it is well-formed.

    Raises:
        UsageError: for an empty id, one holding anything but letters, digits, '-' and '_', or
            one longer than the database's column (:data:`MAX_RUN_ID`).
    """
    if not run_id.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"run id {run_id!r} may only hold letters, digits, '-' and '_'")
    if len(run_id) > MAX_RUN_ID:
        raise UsageError(f"run id {run_id!r} is {len(run_id)} characters; at most {MAX_RUN_ID}")
    return run_id


def check_key(key: str) -> str:
    """Return ``key`` when it can be an idempotency key (1 to 200 characters).

    Raises:
        UsageError: otherwise.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise UsageError(f"idempotency key must be 1 to {MAX_KEY_LENGTH} characters, got {key!r}")
    return key


def check_deadline(deadline: Any) -> str:
    """``deadline`` (seconds) as the run header holds it, when it is above 0.

    Raises:
        UsageError: for anything but a finite number of seconds above 0 (and at most
            ``MAX_SECONDS``).
    """
    if not valid_deadline(deadline):
        raise UsageError(
            f"deadline must be a number of seconds above 0 (at most {MAX_SECONDS}),"
            f" got {deadline!r}"
        )
    short = f"{deadline:g}"
    return short if float(short) == deadline else repr(float(deadline))


def check_max_steps(max_steps: Any) -> int:
    """Return ``max_steps`` when it is a whole number from 1.

    Raises:
        UsageError: otherwise.
    """
    if not valid_max_steps(max_steps):
        raise UsageError(f"max_steps must be a whole number from 1, got {max_steps!r}")
    return int(max_steps)


def prepare(
    context: Context,
    start: str,
    payloads: Sequence[Mapping[str, Any]],
    run_ids: Sequence[str | None] | None = None,
    keys: Sequence[str | None] | None = None,
    label: Callable[[int], str] = lambda n: f"payload {n}",
    deadline: float | None = None,
    max_steps: int | None = None,
) -> Batch:
    """Check the start node and every payload, id and key before anything is sent.

    ``deadline`` (seconds) and ``max_steps`` apply to every run; None: the graph's
    ``DEADLINE`` and ``MAX_STEPS``, if it declares them.

    Raises:
        UsageError: for an unknown start node, a malformed run id or key, a deadline that is
            not seconds above 0, a ``max_steps`` below 1.
        PayloadError: for a payload that is not a JSON object or is over the size limit,
            naming it by ``label(index)``.
    """
    graph = context.graph()
    if start not in graph.connections:
        known = ", ".join(graph.nodes)
        raise UsageError(f"unknown start module {start!r} (graph nodes: {known})")
    deadline = graph.deadline if deadline is None else deadline
    max_steps = graph.max_steps if max_steps is None else max_steps
    deadline_text = check_deadline(deadline) if deadline is not None else ""
    budget = check_max_steps(max_steps) if max_steps is not None else 0
    limit = context.settings.max_payload_bytes
    fresh = os.urandom(16 * len(payloads))  # random bytes of uuid4()s, in one system call
    runs = []
    for n, payload in enumerate(payloads):
        if not isinstance(payload, Mapping):
            raise PayloadError(f"{label(n)} must be a JSON object, got {type(payload).__name__}")
        run_id = run_ids[n] if run_ids is not None else None
        key = keys[n] if keys is not None else None
        runs.append(
            NewRunPlan(
                run_id=check_run_id(run_id) if run_id is not None else _uuid4(fresh, n),
                payload=payload,
                input=to_json(payload, label(n), limit),
                key=check_key(key) if key is not None else "",
            )
        )
    shape = (graph.package, graph.version, start)
    if shape not in _shapes:
        _shapes[shape] = (graph.to_json(), json.dumps(graph.join_arrivals_from(start)))
    shape_json, joins = _shapes[shape]
    submission = Submission(
        start=start,
        package=graph.package,
        graph=shape_json,
        joins=joins,
        version=graph.version,
        claim_ms=int(context.tuning.key_claim * 1000),
        deadline=deadline_text,
        max_steps=budget,
    )
    return Batch(graph, start, submission, tuple(runs))


def _uuid4(random: bytes, n: int) -> str:
    """The ``n``-th uuid4's hex (what ``uuid.uuid4().hex`` gives) of ``random``'s bytes."""
    return uuid.UUID(bytes=random[16 * n : 16 * n + 16], version=4).hex


# A graph's shape and the joins a start cannot fully reach, as JSON, by package, version and
# start: built once (building them cost a single submission a fifth of its time).
_shapes: dict[tuple[str, str, str], tuple[str, str]] = {}


def send(context: Context, batch: Batch) -> Iterator[list[str]]:
    """Submit the batch's runs, ``Tuning.submit_chunk`` per Lua call; yields each chunk's run
    ids (for a run whose key was taken, the run that holds it), in order. Chunks without keys
    are pipelined (:meth:`~ezgraph.state.runs.RedisRuns.submit_each`).

    Raises:
        UsageError: for a run id that exists already.
        ConnectionFailed: when a key's claim stays held by another submitter past the
            client's patience.
        RedisError: from Redis (the chunks yielded before were submitted).
    """
    size = context.tuning.submit_chunk
    chunks = [batch.runs[first : first + size] for first in range(0, len(batch.runs), size)]
    if any(r.key for r in batch.runs):
        for runs in chunks:
            yield _send_chunk(context, batch, runs)
        return
    requests = (
        [(NewRun(r.run_id, r.input, "", "create"), job) for r, job in zip(runs, jobs, strict=True)]
        for runs in chunks
        for jobs in [_jobs(context, batch, runs)]
    )
    replies_each = context.runs.submit_each(batch.submission, requests)
    for runs, replies in zip(chunks, replies_each, strict=True):
        ids: list[str | None] = [None] * len(runs)
        _read_replies(runs, range(len(runs)), replies, ids, {})
        yield [run_id or "" for run_id in ids]  # each one created, or taken: raised


def in_flight(context: Context) -> int:
    """How many runs :func:`send` may have sent beyond those it yielded: two chunks."""
    return 2 * context.tuning.submit_chunk


def _jobs(context: Context, batch: Batch, runs: Sequence[NewRunPlan]) -> list[PlannedJob]:
    """The start step's job of each run."""
    graph, start, version = batch.graph, batch.start, batch.graph.version
    jobs = []
    for r in runs:
        job = StepJob(r.run_id, start, graph.package, dict(r.payload), graph_version=version)
        if context.tracing is not None:  # the run's trace starts here
            job = replace(job, trace=context.tracing.submitted(r.run_id, job))
        jobs.append(context.jobs.build(graph, job))
    return jobs


def _send_chunk(context: Context, batch: Batch, runs: Sequence[NewRunPlan]) -> list[str]:
    """One chunk: one call; for keyed runs, a claim, an SQL read and a second call."""
    jobs = _jobs(context, batch, runs)
    ids: list[str | None] = [None] * len(runs)
    action: dict[int, Action] = {n: "claim" if r.key else "create" for n, r in enumerate(runs)}
    todo = list(range(len(runs)))
    deadline = time.monotonic() + context.tuning.client_patience
    while todo:
        requests = [
            (NewRun(runs[n].run_id, runs[n].input, runs[n].key, action[n]), jobs[n]) for n in todo
        ]
        replies = context.runs.submit(batch.submission, requests)
        claimed, busy = _read_replies(runs, todo, replies, ids, action)
        if claimed:
            found = context.store.runs_by_key([runs[n].key for n in claimed])
            for n in claimed:
                held = found.get(runs[n].key)
                ids[n], action[n] = (held, "release") if held is not None else (None, "create")
        elif busy:
            if time.monotonic() > deadline:
                keys = ", ".join(repr(runs[n].key) for n in busy[:3])
                raise ConnectionFailed(
                    f"idempotency key {keys} stayed claimed by another submitter for"
                    f" {context.tuning.client_patience:g} s"
                )
            time.sleep(context.tuning.key_wait)
        todo = claimed + busy
    return [run_id or "" for run_id in ids]  # each one set: nothing is left to do


def _read_replies(
    runs: Sequence[NewRunPlan],
    sent: Sequence[int],
    replies: Sequence[Submitted],
    ids: list[str | None],
    action: dict[int, Action],
) -> tuple[list[int], list[int]]:
    """Record the run ids ``submit_run`` gave; return the runs whose key this caller claimed
    (to look up in SQL), and those whose key another caller holds (to claim again)."""
    claimed, busy = [], []
    for n, reply in zip(sent, replies, strict=True):
        if reply.status == "created":
            ids[n] = runs[n].run_id
        elif reply.status == "existing":
            ids[n] = reply.run_id
        elif reply.status == "taken":
            raise UsageError(f"run id {runs[n].run_id!r} exists already")
        elif reply.status == "claimed":
            claimed.append(n)
        elif reply.status == "busy":
            ids[n], action[n] = None, "claim"
            busy.append(n)
        # released: its id is the one SQL holds
    return claimed, busy
