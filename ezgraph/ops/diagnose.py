"""Why is this run stuck: ``ezgraph diagnose RUN`` names the cause, step by step.

It reads the run (Redis while live, SQL after), what RQ holds of each waiting step's job, the
workers and their liveness (:mod:`ezgraph.ops.system`), RQ's scheduled registry and scheduler
locks, and whether the database answers. Each finding is one line naming a cause and what
fixes it:

- a step queued on a queue no live worker serves;
- a step held by a dead worker not yet reaped (no ezgraph worker nor ``ezgraph reap --loop``
  runs to give it back);
- a retry scheduled with no scheduler running for its queue;
- a join waiting for named predecessors;
- runs waiting in Redis for a database that does not answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import rq_compat
from ..client import GraphOrchestrator
from ..errors import ConnectionFailed
from ..model.step_job import job_id
from .run_view import RunView, view_run
from .system import WorkerView, read_workers, serving


@dataclass(frozen=True)
class Finding:
    """One thing found: ``stuck`` when it keeps the run from moving on."""

    text: str
    stuck: bool = True


def diagnose(orchestrator: GraphOrchestrator, run_id: str) -> list[Finding]:
    """What keeps run ``run_id`` from ending (an ended run: how it ended, and whether it is in
    SQL).

    Raises:
        UsageError: for a malformed run id.
        RunNotFound: for an unknown run.
    """
    view = view_run(orchestrator, run_id)
    findings = _database(orchestrator, run_id)
    if view.terminal:
        findings.insert(0, Finding(f"run {run_id} is {view.record.status}: it is not stuck", False))
        return findings
    workers = read_workers(orchestrator.context)
    findings += _waiting_steps(orchestrator, view, workers)
    findings += [
        Finding(
            f"step {s.step} waits for signal {s.waiting_for!r}"
            f" (ezgraph signal {run_id} {s.waiting_for} --data JSON)",
            stuck=False,
        )
        for s in view.record.steps
        if s.waiting_for
    ]
    findings += _joins(view)
    findings += _dead_workers(workers)
    if not any(finding.stuck for finding in findings):
        findings.append(
            Finding(f"run {run_id} is {view.record.status}: nothing looks stuck", False)
        )
    return findings


def _waiting_steps(
    orchestrator: GraphOrchestrator, view: RunView, workers: list[WorkerView]
) -> list[Finding]:
    """A finding for each step of the run that waits for RQ (queued, started or scheduled)."""
    context = orchestrator.context
    waiting = [s for s in view.record.steps if s.status in ("queued", "running")]
    jobs = [job_id(view.record.run_id, step.step) for step in waiting]
    details = rq_compat.job_details(context.connection, jobs)
    scheduled = rq_compat.scheduled_times(
        context.connection,
        [(job, d.get("origin", s.node)) for job, d, s in zip(jobs, details, waiting, strict=True)],
    )
    queues = sorted({d.get("origin", s.node) for d, s in zip(details, waiting, strict=True)})
    schedulers = rq_compat.schedulers_running(context.connection, queues)
    by_name = {worker.name: worker for worker in workers}
    findings = []
    for step, job, found, due in zip(waiting, jobs, details, scheduled, strict=True):
        queue = found.get("origin", step.node)
        status = found.get("status")
        if status is None:
            findings.append(Finding(f"step {step.step}: its RQ job {job} is gone"))
        elif status == "scheduled" or due is not None:
            findings.append(_scheduled(step.step, queue, due, workers, schedulers.get(queue)))
        elif status == "started":
            findings.append(_started(step.step, found.get("worker_name", ""), by_name))
        elif status == "queued":
            findings.append(_queued(step.step, queue, workers))
        else:
            findings.append(
                Finding(f"step {step.step}: its RQ job is {status}; the watchdog settles it")
            )
    return findings


def _queued(step: str, queue: str, workers: list[WorkerView]) -> Finding:
    live = serving(workers, queue)
    if live:
        names = ", ".join(w.name for w in live[:3])
        return Finding(
            f"step {step} is queued on {queue!r}, served by {len(live)} live worker(s): {names}",
            False,
        )
    dead = [w.name for w in workers if not w.alive and queue in w.queues]
    also = f" (dead, not reaped: {', '.join(dead)})" if dead else ""
    return Finding(
        f"step {step} is queued on {queue!r}, which no live worker serves{also}:"
        f" start one (ezgraph worker {queue}, or rq worker {queue})"
    )


def _started(step: str, worker: str, by_name: dict[str, WorkerView]) -> Finding:
    found = by_name.get(worker)
    if found is not None and not found.alive:
        return Finding(
            f"step {step} was started by worker {worker}, which is dead ({found.why_dead}) and"
            " not yet reaped: a running ezgraph worker, or ezgraph reap --loop, gives it back"
        )
    if found is None:
        return Finding(
            f"step {step} was started by worker {worker!r}, which Redis no longer knows: the"
            " watchdog (any ezgraph worker, or ezgraph reap --loop) requeues it"
        )
    return Finding(f"step {step} is running on worker {worker}", False)


def _scheduled(
    step: str, queue: str, due: float | None, workers: list[WorkerView], rq_scheduler: bool | None
) -> Finding:
    when = "" if due is None else f", due {max(0.0, due - time.time()):.0f} s from now"
    ours = [w for w in serving(workers, queue) if w.kind == "ezgraph"]
    if ours or rq_scheduler:
        return Finding(f"step {step} waits for its retry on {queue!r}{when}", False)
    return Finding(
        f"step {step} waits for a retry scheduled on {queue!r}{when}, and no scheduler runs for"
        f" that queue: start ezgraph worker {queue} (it schedules), or rq worker --with-scheduler"
    )


def _joins(view: RunView) -> list[Finding]:
    """Joins not created yet, and the predecessors they still wait for."""
    graph = view.graph
    if graph is None:
        return []
    findings = []
    for node, status in view.nodes.items():
        if status != "pending" or not graph.is_join(node):
            continue
        waiting = [
            p
            for p in graph.predecessors(node)
            if view.nodes.get(p) in ("pending", "queued", "running", "waiting")
        ]
        arrived = [p for p in graph.predecessors(node) if p not in waiting]
        if waiting:
            done = f" ({', '.join(arrived)} arrived)" if arrived else ""
            findings.append(
                Finding(f"join {node} waits for {', '.join(waiting)}{done}", stuck=False)
            )
    return findings


def _dead_workers(workers: list[WorkerView]) -> list[Finding]:
    dead = [w for w in workers if not w.alive]
    if not dead or any(w.alive and w.kind == "ezgraph" for w in workers):
        return []  # a live ezgraph worker reaps them within seconds
    names = ", ".join(f"{w.name} ({w.why_dead})" for w in dead[:5])
    return [
        Finding(
            f"{len(dead)} dead worker(s) not reaped, and no ezgraph worker runs to reap them:"
            f" {names}; run ezgraph reap --loop beside stock workers",
            stuck=False,
        )
    ]


def _database(orchestrator: GraphOrchestrator, run_id: str) -> list[Finding]:
    """Runs waiting in Redis for the database, and whether it answers now."""
    context = orchestrator.context
    waiting = context.runs.unsaved_count()
    if not waiting:
        return []
    mine = run_id in context.runs.unsaved(limit=100_000)
    try:
        context.store.count_runs()
    except ConnectionFailed as error:
        which = "this run and " if mine else ""
        return [
            Finding(
                f"{which}{waiting} ended run(s) wait in Redis for a database that is down: {error}"
            )
        ]
    if mine:
        text = (
            f"run {run_id} ended and waits to be written to SQL ({waiting} waiting); the"
            " database answers: ezgraph persist writes them now"
        )
        return [Finding(text, False)]
    return []
