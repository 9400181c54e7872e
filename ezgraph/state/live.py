"""A run as Redis holds it, decoded into records (pure: the reads are
:class:`~ezgraph.state.runs.RedisRuns`'s).

The writer, ``status()`` and the dashboard all see a live run through :func:`record_from_live`;
a wide map's steps come a chunk at a time through :func:`steps_in_order`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..model.records import (
    EncodedJSON,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    parse_rq_date,
)
from ..model.step_job import step_name

# What a step's record is made of (:func:`_step`; ``map``: a node's mapped instances).
RECORD_FIELDS = (
    "status", "attempts", "input", "output", "error", "started_at", "ended_at", "worker", "wait",
    "map",
)  # fmt: skip


@dataclass(frozen=True)
class LiveRun:
    """A run as Redis holds it: its header, its steps' fields and the states it kept."""

    run_id: str
    header: dict[str, str]
    steps: dict[str, dict[str, str]]
    states: dict[str, str]
    events: tuple[EventRecord, ...] = ()  # read only for the writer (read_many's ``events``)


def record_from_live(
    live: LiveRun, job_statuses: dict[str, str] | None = None, encoded: bool = False
) -> RunRecord:
    """A :class:`RunRecord` from a run as Redis holds it.

    ``job_statuses`` (step -> RQ job status) lets a queued step show as running while RQ runs
    it. ``encoded``: the input, outputs and result stay JSON text (for the store); otherwise
    they are parsed.
    """
    header = live.header
    graph = graph_shape(header["graph"])
    order: list[str] = list(graph["succ"])
    read = live.steps.get
    steps = [
        step
        for part in steps_in_order(
            graph, lambda names: [read(n) or {} for n in names], math.inf, job_statuses, encoded
        )
        for step in part
    ]
    status = RunStatus(header["status"])
    if status == RunStatus.QUEUED and any(s.status != StepStatus.QUEUED for s in steps):
        status = RunStatus.RUNNING
    result: Any = None
    if status == RunStatus.FINISHED:
        kept = [live.states[n] for n in order if not graph["succ"][n] and n in live.states]
        if encoded and len(kept) == 1:
            result = EncodedJSON(kept[0])
        else:
            result = {}
            for state in kept:
                result.update(json.loads(state))
    return RunRecord(
        run_id=live.run_id,
        package=header.get("package", ""),
        start=header.get("start", ""),
        status=status,
        input=_json(header.get("input") or "null", encoded),
        result=result,
        error=header.get("error") or None,
        created_at=parse_rq_date(header.get("created_at")),
        ended_at=parse_rq_date(header.get("ended_at")),
        steps=tuple(steps),
        events=live.events,
        idempotency_key=header.get("idempotency_key") or None,
        deadline_at=_epoch(header.get("deadline_at")),
    )


def steps_in_order(
    graph: dict[str, Any],
    read: Callable[[list[str]], list[dict[str, str]]],
    chunk: float,
    job_statuses: dict[str, str] | None = None,
    encoded: bool = False,
) -> Iterator[list[StepRecord]]:
    """A run's step records in the order SQL keeps them (each node of the graph that ran,
    then its mapped instances in item order), ``chunk`` at most per list; ``read`` gives the
    fields of the named steps."""
    for node in graph["succ"]:
        [fields] = read([node])
        if fields:
            yield [_step(node, node, None, fields, job_statuses, encoded)]
        count = int(fields.get("map", 0)) if fields else 0
        low = 0
        while low < count:
            high = int(min(count, low + chunk))
            names = [step_name(node, i) for i in range(low, high)]
            yield [
                _step(name, node, low + n, found, job_statuses, encoded)
                for n, (name, found) in enumerate(zip(names, read(names), strict=True))
            ]
            low = high


def _epoch(text: str | None) -> datetime | None:
    """An epoch-seconds text as an aware UTC datetime; None for empty."""
    return datetime.fromtimestamp(float(text), UTC) if text else None


@functools.lru_cache(maxsize=64)
def graph_shape(text: str) -> dict[str, Any]:
    """A run's graph shape, parsed once per distinct graph. Callers must not change it."""
    graph: dict[str, Any] = json.loads(text)
    return graph


def _json(text: str, encoded: bool) -> Any:
    return EncodedJSON(text) if encoded else json.loads(text)


def _step(
    name: str,
    node: str,
    index: int | None,
    fields: dict[str, str],
    jobs: dict[str, str] | None,
    encoded: bool = False,
) -> StepRecord:
    status = StepStatus(fields.get("status", StepStatus.QUEUED))
    if status == StepStatus.QUEUED and jobs and jobs.get(name) == "started":
        status = StepStatus.RUNNING
    step_input, output = fields.get("input"), fields.get("output")
    return StepRecord(
        step=name,
        node=node,
        index=index,
        status=status,
        attempts=int(fields.get("attempts") or 0),
        input=_json(step_input, encoded) if step_input else None,
        output=_json(output, encoded) if output else None,
        error=fields.get("error") or None,
        started_at=parse_rq_date(fields.get("started_at")),
        ended_at=parse_rq_date(fields.get("ended_at")),
        worker=fields.get("worker") or None,
        waiting_for=fields.get("wait") if status == StepStatus.WAITING else None,
    )


def by_step(fields: dict[str, str]) -> dict[str, dict[str, str]]:
    """A run's steps hash (``<step>.<field>`` keys) as ``{step: {field: value}}``."""
    steps: dict[str, dict[str, str]] = {}
    for name, value in fields.items():
        step, _, field = name.rpartition(".")
        steps.setdefault(step, {})[field] = value
    return steps


def parse_stream(reply: Any) -> tuple[EventRecord, ...]:
    """A raw XRANGE reply of a run's events as records."""
    return tuple(
        EventRecord(entry_id.decode(), text_dict(fields).get("e", "{}"))
        for entry_id, fields in reply or ()
    )


def text_dict(reply: Any) -> dict[str, str]:
    """A raw HGETALL reply (a flat list in RESP2, a map in RESP3) as a dict of text."""
    if isinstance(reply, dict):
        return {k.decode(): v.decode() for k, v in reply.items()}
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
