"""The run watchdog: finds the steps a run still expects that no worker will ever finish.

Crash detection that does not wait for RQ's job timeout or its 600 s maintenance pass:

- a step whose RQ job is ``started`` by a stock ``rq worker`` whose step heartbeat
  (``<prefix>:beat:<job>``, refreshed every second by the worker's companion thread once the
  step has run half a second) is missing after the grace — the worker or its machine died —
  goes back to the front of its queue;
- a step whose RQ job is ``queued`` but sits in no queue (a stock worker listening on several
  queues pops with a bare LPOP/BLPOP, so a kill right after the pop loses the job) is pushed back;
- a step whose RQ job ended ``failed``, ``stopped`` or ``canceled`` without the step wrapper
  recording it (a killed work-horse with no retry left) fails its step and so its run.

A started or queued step is acted on only once it has looked lost for the grace, timed by
Redis's clock (a suspicion key's remaining lifetime): the watchdog compares no date a worker on
another machine wrote with its own clock, so a clock that runs ahead cannot make a step that has
just started, and has no heartbeat yet, look lost. Each execution of a job (RQ's ``started_at``,
or its enqueue and recovery count) is suspected afresh.

Claims of dead ezgraph workers are handled by :func:`ezgraph.workers.fast.reap_dead_workers`.
Every ezgraph worker runs one pass a second (one worker at a time); ``ezgraph reap`` runs it
where only stock workers run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .context import Runtime
from .state.runs import RunBook, as_text

logger = logging.getLogger(__name__)

GRACE = 2.0  # seconds a step may look lost before it is acted on
SUSPECT_TTL = 30_000  # milliseconds a suspicion lasts (a step that looked lost, not acted on)
MAX_RECOVERIES = 3  # times a step whose process died is run again before its run fails
READ_CHUNK = 50  # runs whose steps are read from Redis at a time (a worker's memory peak)


_JOB_FIELDS = ("status", "worker_name", "origin", "started_at", "enqueued_at")  # read of RQ's job
DIED = f"its worker process died running it {MAX_RECOVERIES + 1} times"  # a step's end
_LOST = {  # what was done, by the RQ status of a step's job
    "started": "its worker died, step requeued",
    "queued": "lost from its queue, pushed back",
    "failed": "its work-horse died, step requeued",
}


class _Job(NamedTuple):
    """A step its run expects, and what RQ says of its job."""

    run_id: str
    step: str
    job_id: str
    recovered: int  # times the step was run again after its process died
    status: str | None
    worker: str | None
    queue: str
    execution: str  # which execution of the job: when RQ started it, or when it was queued
    beating: bool


@dataclass
class WatchReport:
    """What one pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)  # look lost, not yet for the grace


def watch_runs(runtime: Runtime, grace: float = GRACE, limit: int = 500) -> WatchReport:
    """One pass over the oldest live runs (at most ``limit``) that started over ``grace`` ago
    (by the submitter's clock); a step is acted on once it has looked lost for ``grace``."""
    book = runtime.book
    connection = runtime.connection
    prefix = runtime.settings.key_prefix
    report = WatchReport()
    run_ids = [
        as_text(raw) or ""
        for raw in connection.zrangebyscore(
            f"{prefix}:runs:live", "-inf", time.time() - grace, start=0, num=limit
        )
    ]
    if not run_ids:
        return report
    waiting: list[tuple[str, str, str, int]] = []  # run, step, job id, recoveries so far
    for first in range(0, len(run_ids), READ_CHUNK):
        chunk = run_ids[first : first + READ_CHUNK]
        for run_id, steps in zip(chunk, book.read_steps(chunk), strict=True):
            for step, fields in steps.items():
                if fields.get("status") == "queued" and fields.get("job"):
                    recovered = int(fields.get("recovered") or 0)
                    waiting.append((run_id, step, fields["job"], recovered))
    if not waiting:
        return report
    # One round trip: the worker names, and each job's RQ status and step heartbeat.
    commands: list[tuple[str, ...]] = [("SMEMBERS", f"{prefix}:workers")]
    for _, _, job_id, _ in waiting:
        commands += [
            ("HMGET", f"rq:job:{job_id}", *_JOB_FIELDS),
            ("EXISTS", f"{prefix}:beat:{job_id}"),
        ]
    replies = book.read_pipelined(commands)
    workers = sorted(as_text(name) or "" for name in replies[0])
    jobs = []
    for n, (run_id, step, job_id, recovered) in enumerate(waiting):
        status, worker, origin, started, enqueued = (as_text(v) for v in replies[1 + 2 * n])
        queue = origin or step.rsplit("-", 1)[0]
        execution = (started or "") if status == "started" else f"{enqueued}/{recovered}"
        beating = bool(replies[2 + 2 * n])
        jobs.append(
            _Job(run_id, step, job_id, recovered, status, worker, queue, execution, beating)
        )
    listed = _listed(book, prefix, workers, [j for j in jobs if j.status == "queued"])
    alive: dict[str, bool] = {}
    lost: list[_Job] = []  # started with no heartbeat by a gone worker, or queued in no list
    for job in jobs:
        if job.status == "started" and not job.beating and job.worker:
            if job.worker not in alive:
                alive[job.worker] = bool(connection.exists(f"{prefix}:alive:{job.worker}"))
            if not alive[job.worker]:  # an ezgraph worker's liveness key speaks for its claims
                lost.append(job)
        elif job.status == "queued" and job.job_id not in listed:
            lost.append(job)
    # A started step beats only after half a second, and a stock worker marks a popped job
    # started a moment after the pop: act on a step once it has looked lost for the grace.
    for job, looked_lost in zip(lost, _looked_lost_for(book, prefix, lost), strict=True):
        if looked_lost < grace:
            report.suspected.append(job.job_id)
        elif job.status == "started" and job.recovered >= MAX_RECOVERIES:
            _fail(runtime, job, DIED, report)  # a step that kills its worker, again and again
        else:
            _requeue(runtime, job, report)
    for job in jobs:
        if job.status in ("started", "queued"):
            continue
        if job.status == "failed" and job.recovered < MAX_RECOVERIES:
            # RQ failed the job but the wrapper never recorded the step: the process running it
            # died (a killed or OOM work-horse, a hard timeout kill). Not the step's fault: run
            # it again, a bounded number of times.
            _requeue(runtime, job, report)
        elif job.status in ("failed", "stopped", "canceled") or job.status is None:
            reason = {
                None: "its RQ job vanished",
                "failed": DIED,
                "stopped": "its RQ job was stopped",
                "canceled": "its RQ job was canceled",
            }[job.status]
            _fail(runtime, job, reason, report)
    return report


def _fail(runtime: Runtime, job: _Job, reason: str, report: WatchReport) -> None:
    fail_lost_step(runtime, job.run_id, job.step, job.job_id, job.worker or "", reason, report)


def fail_lost_step(
    runtime: Runtime,
    run_id: str,
    step: str,
    job_id: str,
    worker: str,
    reason: str,
    report: WatchReport,
) -> None:
    """Fail ``step`` of ``run_id`` for ``reason`` (a step no worker will finish), and so its
    run; the watchdog's and the dead workers' reaper's (:mod:`ezgraph.workers.fast`) one way."""
    outcome = runtime.book.fail(run_id, step, f"{step}: {reason}", "", worker, 0, "")
    if outcome.status == "ok":
        logger.warning("run %s step %s: %s, step failed", run_id, step, reason)
        report.failed.append(job_id)
        if outcome.run_ended:
            runtime.save_runs([run_id])


def _listed(book: RunBook, prefix: str, workers: Sequence[str], jobs: Sequence[_Job]) -> set[str]:
    """The ids of ``jobs`` found in a list: their queue, its intermediate list (a stock worker's
    dequeue) or an ezgraph worker's claimed list. One round trip for them all, each job's lists
    looked at in that order (a claim moves a job from the first to the last)."""
    lookups = [
        (job.job_id, key)
        for job in jobs
        for key in (
            f"rq:queue:{job.queue}",
            f"rq:queue:{job.queue}:intermediate",
            *(f"{prefix}:claimed:{worker}" for worker in workers),
        )
    ]
    positions = book.read_pipelined([("LPOS", key, job_id) for job_id, key in lookups])
    return {job_id for (job_id, _), at in zip(lookups, positions, strict=True) if at is not None}


def _looked_lost_for(book: RunBook, prefix: str, jobs: Sequence[_Job]) -> list[float]:
    """Seconds each of ``jobs`` (each execution of it) has looked lost, by Redis's clock: 0.0
    when it looks lost for the first time now. One round trip for them all."""
    if not jobs:
        return []
    commands: list[tuple[object, ...]] = []
    for job in jobs:
        key = f"{prefix}:suspect:{job.job_id}:{job.execution}"
        commands += [("SET", key, 1, "NX", "PX", SUSPECT_TTL), ("PTTL", key)]
    replies = book.read_pipelined(commands)
    looked = []
    for n in range(len(jobs)):
        first, left = replies[2 * n], int(replies[2 * n + 1])
        looked.append(0.0 if first or left < 0 else (SUSPECT_TTL - left) / 1000)
    return looked


def _requeue(runtime: Runtime, job: _Job, report: WatchReport) -> None:
    """Put ``job`` back at the front of its queue, if it is still as this pass saw it."""
    status = job.status or ""
    if runtime.book.call("requeue_job", job.run_id, job.job_id, job.queue, status):
        logger.warning("run %s step %s: %s", job.run_id, job.step, _LOST[status])
        report.requeued.append(job.job_id)
