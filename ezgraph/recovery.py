"""Recovery: every way a step that no worker will finish comes back (or fails its run).

Crash detection that does not wait for RQ's job timeout or its 600 s maintenance pass. Every
ezgraph worker runs it once a second (:func:`recover`, one worker at a time); ``ezgraph reap``
runs it where only stock workers run.

- **Dead ezgraph workers** (:func:`recover_dead_workers`): a worker whose heartbeat expired
  gives back every job it had claimed, to the front of its queue.
- **Waits** (:func:`watch_waits`): a step waiting for a signal past its deadline fails its
  run; one whose signal came but whose sender died before resuming it is resumed.
- **The watchdog** (:func:`watch_runs`) looks at the steps live runs still expect:
  a step whose job is ``started`` by a worker that no longer beats goes back to its queue; one
  whose job is ``queued`` but sits in no list (a stock worker listening on several queues pops
  with a bare BLPOP, so a kill right after the pop loses the job) is pushed back; one whose job
  ended ``failed``, ``stopped`` or ``canceled`` without the step being recorded (a killed
  work-horse) runs again, or fails its run.

- **Deadlines** (:func:`fail_past_deadline`): a run still going at its deadline fails with
  ``DeadlineExceeded``, as a cancel stops a run: its queued steps are canceled, its running
  ones sent RQ's stop command (a step that cannot be stopped finishes and creates nothing).

A started or queued step is acted on only once it has looked lost for the grace, timed by
Redis's clock (a suspicion key's remaining lifetime), never by comparing a date another machine
wrote with this one's clock. A step whose process keeps dying runs again at most
``max_recoveries`` times, then fails with its run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from . import liveness, rq_compat
from .completion import RunEnded, create_map, resume_waiting, sweep_stopped
from .context import Context
from .errors import DeadlineExceeded, EzgraphError
from .model import step_job
from .state.protocol import Failure, as_text

logger = logging.getLogger(__name__)

_JOB_FIELDS = ("status", "worker_name", "origin", "started_at", "enqueued_at")  # read of RQ's job
_REQUEUED = {  # what was done, by the RQ status of a step's job
    "started": "its worker died, step requeued",
    "queued": "lost from its queue, pushed back",
    "failed": "its work-horse died, step requeued",
}
_FAILED = {  # why a step fails, by the RQ status of its job (None: the job is gone)
    None: "its RQ job vanished",
    "stopped": "its RQ job was stopped",
    "canceled": "its RQ job was canceled",
}


def died_message(max_recoveries: int) -> str:
    """The error of a step whose process died running it once too often."""
    return f"its worker process died running it {max_recoveries + 1} times"


@dataclass
class Report:
    """What one recovery pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)  # look lost, not yet for the grace
    past_deadline: list[str] = field(default_factory=list)  # runs failed at their deadline
    maps_resumed: list[str] = field(default_factory=list)  # <run>/<node>: maps created on
    runs_swept: list[str] = field(default_factory=list)  # stopped runs whose jobs were swept


def recover(context: Context, ended: RunEnded) -> Report:
    """One pass: give back dead workers' claims, fail the runs past their deadline, the
    watchdog's pass, then go on creating the maps whose worker died while it created them,
    and sweeping the jobs of stopped wide runs."""
    report = recover_dead_workers(context, ended)
    fail_past_deadline(context, ended, report)
    watch_runs(context, ended, report)
    resume_maps(context, ended, report)
    resume_sweeps(context, ended, report)
    return report


def resume_maps(context: Context, ended: RunEnded, report: Report | None = None) -> Report:
    """Go on creating each map whose creation made no progress for the grace (its worker
    died, or stalls): a chunk per call, from where the last call ended."""
    report = report if report is not None else Report()
    for run_id, node in context.runs.maps_to_resume(context.tuning.grace):
        logger.warning("run %s: the creation of map %s stalled; going on with it", run_id, node)
        create_map(context, run_id, node, ended)
        report.maps_resumed.append(f"{run_id}/{node}")
    return report


def resume_sweeps(context: Context, ended: RunEnded, report: Report | None = None) -> Report:
    """Sweep the jobs of the stopped runs whose first chunk the call that stopped them swept
    (a wide map's run that failed, or canceled by a client that went away)."""
    report = report if report is not None else Report()
    for run_id in context.runs.runs_sweeping(context.tuning.watch_limit):
        sweep_stopped(context, run_id, ended)
        report.runs_swept.append(run_id)
    return report


def deadline_error(deadline: str) -> str:
    """The error of a run still going at its deadline (``deadline``: seconds, as submitted)."""
    name = DeadlineExceeded.__name__
    return f"{name}: the run was still going {deadline} s after it was submitted"


def fail_past_deadline(context: Context, ended: RunEnded, report: Report | None = None) -> Report:
    """Fail the runs whose deadline has passed (O(due): the earliest deadlines are read),
    through the cancel path: queued steps canceled, running ones sent RQ's stop command."""
    report = report if report is not None else Report()
    for run_id, deadline in context.runs.past_deadline(context.tuning.watch_limit):
        outcome = context.runs.cancel(run_id, deadline_error(deadline), "failed")
        if outcome.status != "ok":
            continue  # it ended or stopped otherwise meanwhile (and left the deadlines set)
        logger.warning("run %s: past its deadline of %s s, failed", run_id, deadline)
        report.past_deadline.append(run_id)
        if outcome.run_ended:
            ended(run_id)
            continue
        steps = context.runs.read_steps([run_id])[0]
        jobs = [f["job"] for f in steps.values() if f.get("status") == "queued" and f.get("job")]
        statuses = rq_compat.job_statuses(context.connection, jobs)
        for job, status in zip(jobs, statuses, strict=True):
            if status == "started":  # a stopped job's step is failed by the watchdog's pass
                rq_compat.stop_job(context.connection, job)
    return report


def recover_dead_workers(context: Context, ended: RunEnded, report: Report | None = None) -> Report:
    """Give back the claimed jobs of every ezgraph worker whose heartbeat expired. A job
    whose workers died holding it more than ``max_recoveries`` times fails, and its run."""
    report = report if report is not None else Report()
    keys = context.keys
    workers = sorted(as_text(raw) or "" for raw in context.connection.smembers(keys.workers))
    beating = liveness.alive(context.connection, keys, workers)
    silent = [name for name in workers if not beating[name]]
    if len(silent) < len(workers):  # a worker seen alive again is no longer suspected
        context.connection.delete(*(keys.suspect("worker", n) for n in workers if beating[n]))
    # A worker is taken for dead once it has been silent for the grace, by Redis's clock: its
    # heartbeat may have expired while Redis itself stood still (a stall), and it beats again
    # within a second of Redis waking.
    suspicions = [keys.suspect("worker", name) for name in silent]
    max_recoveries = context.tuning.max_recoveries
    for name, looked_dead in zip(silent, _looked_lost_for(context, suspicions), strict=True):
        if looked_dead < context.tuning.grace:
            report.suspected.append(name)
            continue
        requeued, failed = context.runs.requeue_claims(name, max_recoveries)
        if requeued:
            logger.warning("worker %s is gone: requeued %d steps", name, len(requeued))
        report.requeued.extend(requeued)
        _fail_given_back(context, name, failed, died_message(max_recoveries), report, ended)
    return report


def give_back_claims(context: Context, worker: str, reason: str, ended: RunEnded) -> None:
    """A worker about to end gives back what it claimed as a dead one would: each job counts
    the death, and one past ``max_recoveries`` fails its step (and its run) for ``reason``."""
    _, failed = context.runs.requeue_claims(worker, context.tuning.max_recoveries)
    why = f"{reason}, {context.tuning.max_recoveries + 1} times"
    _fail_given_back(context, worker, failed, why, Report(), ended)


def _fail_given_back(
    context: Context,
    worker: str,
    job_ids: list[str],
    reason: str,
    report: Report,
    ended: RunEnded,
) -> None:
    """Fail the steps of jobs given back past their death bound (a job that is no ezgraph step
    stays in RQ's failed registry)."""
    for job_id in job_ids:
        run_id = rq_compat.run_id_of_job(context.connection, job_id)
        if run_id is None:
            report.failed.append(job_id)
            continue
        step = job_id[len(run_id) + 1 :]
        fail_lost_step(context, run_id, step, job_id, worker, reason, report, ended)


class WatchedStep(NamedTuple):
    """A step its run expects, and what RQ says of its job."""

    run_id: str
    step: str
    job_id: str
    recovered: int  # times the step was run again after its process died
    status: str | None
    worker: str | None
    queue: str
    execution: str  # which execution of the job: when RQ started it, or when it was queued


def watch_runs(context: Context, ended: RunEnded, report: Report | None = None) -> Report:
    """One watchdog pass over the oldest live runs that started over the grace ago (by the
    submitter's clock); a step is acted on once it has looked lost for the grace."""
    report = report if report is not None else Report()
    watch_waits(context, ended, report)
    waiting = _waiting_steps(context)
    if not waiting:
        return report
    watched, workers = _read_jobs(context, waiting)
    lost = _lost(context, watched, workers)
    grace = context.tuning.grace
    suspicions = [context.keys.suspect(step.job_id, step.execution) for step in lost]
    for step, looked_lost in zip(lost, _looked_lost_for(context, suspicions), strict=True):
        if looked_lost < grace:
            report.suspected.append(step.job_id)
        elif step.status == "started" and step.recovered >= context.tuning.max_recoveries:
            # a step that kills its worker, again and again
            _fail(context, step, died_message(context.tuning.max_recoveries), report, ended)
        else:
            _requeue(context, step, report)
    for step in watched:
        _settle_ended_job(context, step, report, ended)
    return report


def watch_waits(context: Context, ended: RunEnded, report: Report) -> None:
    """Steps waiting for a signal that are due a look: one whose signal came is resumed (its
    sender died before it could), one past its deadline fails with its run, one no longer
    waiting (resumed, canceled) is forgotten."""
    for run_id, step in context.runs.waits_due(context.tuning.watch_limit):
        try:
            what, name = resume_waiting(context, run_id, step, ended)
        except EzgraphError as error:  # its graph cannot plan the rest here (a deploy)
            reason = f"cannot resume after its signal: {error}"
            fail_lost_step(
                context, run_id, step, step_job.job_id(run_id, step), "", reason, report, ended
            )
        else:
            if what == "waiting":
                reason = f"timed out waiting for signal {name!r}"
                fail_lost_step(
                    context, run_id, step, step_job.job_id(run_id, step), "", reason, report, ended
                )
        context.runs.unwatch_wait(run_id, step)


def _waiting_steps(context: Context) -> list[tuple[str, str, str, int]]:
    """The steps live runs wait for (run, step, job id, times recovered), read in chunks;
    of a wide run, the ``watch_steps`` lowest in item order (those started first, which a
    dead worker may hold), so that a pass costs the same whatever the width of a map
    (:meth:`~ezgraph.state.runs.RedisRuns.read_waiting_window`)."""
    tuning = context.tuning
    run_ids = context.runs.live(older_than=tuning.grace, limit=tuning.watch_limit)
    waiting = []
    for first in range(0, len(run_ids), tuning.watch_read_chunk):
        chunk = run_ids[first : first + tuning.watch_read_chunk]
        read = context.runs.read_waiting_window(chunk, tuning.watch_steps)
        for run_id, steps in zip(chunk, read, strict=True):
            found = [
                (run_id, step, fields["job"], int(fields.get("recovered") or 0))
                for step, fields in steps.items()
                if fields.get("status") == "queued" and fields.get("job")
            ]
            if len(found) > tuning.watch_steps:
                found = sorted(found, key=_item_order)[: tuning.watch_steps]
            waiting += found
    return waiting


def _item_order(waiting: tuple[str, str, str, int]) -> tuple[str, int]:
    """A step's place in its run: its node, then its item's index (a mapped instance)."""
    node, _, index = waiting[1].rpartition("-")
    return (node, int(index)) if node and index.isdigit() else (waiting[1], -1)


def _read_jobs(
    context: Context, waiting: list[tuple[str, str, str, int]]
) -> tuple[list[WatchedStep], list[str]]:
    """What RQ says of each waiting step's job, and the ezgraph workers, in one round trip."""
    commands: list[tuple[str, ...]] = [("SMEMBERS", context.keys.workers)]
    commands += [("HMGET", rq_compat.job_key(job_id), *_JOB_FIELDS) for _, _, job_id, _ in waiting]
    replies = context.scripts.read_pipelined(commands)
    workers = sorted(as_text(name) or "" for name in replies[0])
    watched = []
    for (run_id, step, job_id, recovered), fields in zip(waiting, replies[1:], strict=True):
        status, worker, origin, started, enqueued = (as_text(v) for v in fields)
        queue = origin or step.rsplit("-", 1)[0]
        execution = (started or "") if status == "started" else f"{enqueued}/{recovered}"
        watched.append(
            WatchedStep(run_id, step, job_id, recovered, status, worker, queue, execution)
        )
    return watched, workers


def _lost(context: Context, watched: list[WatchedStep], workers: list[str]) -> list[WatchedStep]:
    """Steps started by a worker that no longer beats, or queued in no list."""
    started_by = sorted({s.worker for s in watched if s.status == "started" and s.worker})
    beating = liveness.alive(context.connection, context.keys, started_by)
    queued = [s for s in watched if s.status == "queued"]
    listed = _listed(context, workers, queued)
    return [
        step
        for step in watched
        if (step.status == "started" and step.worker and not beating[step.worker])
        or (step.status == "queued" and step.job_id not in listed)
    ]


def _settle_ended_job(context: Context, step: WatchedStep, report: Report, ended: RunEnded) -> None:
    """A step whose RQ job ended without the step being recorded: its process died (a killed
    or OOM work-horse, a hard timeout kill): run it again, a bounded number of times; or its
    job was stopped, canceled or vanished: fail it."""
    if step.status in ("started", "queued"):
        return
    max_recoveries = context.tuning.max_recoveries
    if step.status == "failed" and step.recovered < max_recoveries:
        _requeue(context, step, report)
    elif step.status == "failed":
        _fail(context, step, died_message(max_recoveries), report, ended)
    elif step.status in _FAILED:
        _fail(context, step, _FAILED[step.status], report, ended)


def _fail(
    context: Context, step: WatchedStep, reason: str, report: Report, ended: RunEnded
) -> None:
    fail_lost_step(
        context, step.run_id, step.step, step.job_id, step.worker or "", reason, report, ended
    )


def fail_lost_step(
    context: Context,
    run_id: str,
    step: str,
    job_id: str,
    worker: str,
    reason: str,
    report: Report,
    ended: RunEnded,
) -> None:
    """Fail ``step`` of ``run_id`` for ``reason`` (a step no worker will finish), and so its
    run; the one way both recoveries fail a step."""
    failure = Failure(run_id, step, f"{step}: {reason}", f"{step}: {reason}", "", worker, 0, "")
    outcome = context.runs.fail_step(failure)
    if outcome.status == "ok":
        logger.warning("run %s step %s: %s, step failed", run_id, step, reason)
        report.failed.append(job_id)
        if outcome.run_ended:
            ended(run_id)


def _listed(context: Context, workers: Sequence[str], steps: Sequence[WatchedStep]) -> set[str]:
    """The job ids of ``steps`` found in a list: their queue, its intermediate list (a stock
    worker's dequeue) or an ezgraph worker's claimed list, looked at in that order (a claim
    moves a job from the first to the last). A job waiting in a queue longer than
    ``watch_queue_scan`` counts as listed (not judged while the jobs ahead of it are served:
    a search of a long list costs its length per job). Two round trips for them all."""
    queues = sorted({step.queue for step in steps})
    lengths = context.scripts.read_pipelined(
        [("LLEN", rq_compat.queue_key(queue)) for queue in queues]
    )
    long_queues = {
        queue
        for queue, length in zip(queues, lengths, strict=True)
        if int(length) > context.tuning.watch_queue_scan
    }
    judged = [step for step in steps if step.queue not in long_queues]
    lookups = [
        (step.job_id, key)
        for step in judged
        for key in (
            rq_compat.queue_key(step.queue),
            rq_compat.intermediate_key(step.queue),
            *(context.keys.claimed(worker) for worker in workers),
        )
    ]
    positions = context.scripts.read_pipelined([("LPOS", key, job) for job, key in lookups])
    listed = {job for (job, _), at in zip(lookups, positions, strict=True) if at is not None}
    return listed | {step.job_id for step in steps if step.queue in long_queues}


def _looked_lost_for(context: Context, suspicions: Sequence[str]) -> list[float]:
    """Seconds each suspicion (a step's execution, a worker) has looked lost, by Redis's
    clock: 0.0 when it looks lost for the first time now. One round trip for them all."""
    if not suspicions:
        return []
    ttl = context.tuning.suspect_ttl_ms
    commands: list[tuple[object, ...]] = []
    for key in suspicions:
        commands += [("SET", key, 1, "NX", "PX", ttl), ("PTTL", key)]
    replies = context.scripts.read_pipelined(commands)
    looked = []
    for n in range(len(suspicions)):
        first, left = replies[2 * n], int(replies[2 * n + 1])
        looked.append(0.0 if first or left < 0 else (ttl - left) / 1000)
    return looked


def _requeue(context: Context, step: WatchedStep, report: Report) -> None:
    """Put a lost step's job back at the front of its queue, if it is still as seen."""
    status = step.status or ""
    if context.runs.requeue_step(step.run_id, step.job_id, step.queue, status):
        logger.warning("run %s step %s: %s", step.run_id, step.step, _REQUEUED[status])
        report.requeued.append(step.job_id)
