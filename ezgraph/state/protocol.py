"""What Python and the Lua scripts say to each other: each script's request and reply.

This module alone knows the order of the values a script reads from ARGV and writes in its
reply. Each record is a NamedTuple whose field order is that order; the scripts read the
records by name through ``FIELDS``, which :func:`lua_header` generates from these classes and
prepends to every script. Every script's ARGV starts with the same :class:`Head`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ..settings import Tuning

SCRIPTS = (
    "submit_run",
    "complete_step",
    "fail_step",
    "cancel_run",
    "finish_and_claim",
    "requeue_claims",
    "requeue_step",
    "enqueue_due_retries",
    "mark_saved",
    "resume_run",
    "read_join_input",
    "append_event",
    "wait_step",
    "signal_run",
    "create_map_chunk",
    "move_watch_window",
    "sweep_run",
)


class Head(NamedTuple):
    """What every call starts with: the key prefixes, the time, and who asks. A call sent
    again with the same caller and request (after a client timeout) gets the first call's
    reply from the scripts that change state, instead of running again."""

    prefix: str
    rq_prefix: str
    now_iso: str  # RQ's date format
    now: str  # epoch seconds
    caller: str  # a thread of a process: its last reply is kept
    request: str  # this call, unique for its caller


class Submission(NamedTuple):
    """New runs of one graph from one start node (``submit_run``); followed by a count and,
    per run, its :class:`NewRun` and its start step's planned job."""

    start: str
    package: str
    graph: str  # the graph's shape as JSON (Graph.to_json)
    joins: str  # JSON {join: arrivals expected}, for joins this start cannot fully reach
    version: str  # the graph's version (Graph.version)
    claim_ms: int  # how long a claim on an idempotency key holds
    deadline: str  # seconds from submission the runs may take, or ''
    max_steps: int  # steps a run may start at most, or 0


Action = Literal["create", "claim", "release"]


class NewRun(NamedTuple):
    """One run of a submission. A run with an idempotency ``key`` is created in two calls: the
    first (``claim``) claims the key, the caller looks the key up in SQL, the second
    (``create``, or ``release`` when SQL knows the key) creates the run if the claim held."""

    run_id: str
    input: str  # the payload as JSON
    key: str  # the idempotency key, or ''
    action: Action


class Submitted(NamedTuple):
    """What ``submit_run`` did with one run: ``created``; ``taken`` (its run id exists);
    ``existing`` (its key belongs to run ``run_id``); ``claimed`` (the key is this call's to
    look up in SQL); ``busy`` (another caller holds the key's claim); ``released``."""

    status: str
    run_id: str

    @classmethod
    def parse_all(cls, reply: Sequence[Any]) -> list[Submitted]:
        """From ``submit_run``'s reply: a pair per run."""
        return [cls(as_text(status) or "", as_text(run_id) or "") for status, run_id in reply]


class JobHead(NamedTuple):
    """A planned job as ARGV holds it: followed by ``field_count`` hash fields."""

    step: str
    job_id: str
    queue: str
    field_count: int


class PlannedJob(NamedTuple):
    """An RQ job a script may create: its step, id, queue and hash fields."""

    step: str
    job_id: str
    queue: str
    fields: Sequence[Any]


# The part of the graph a completion's walk may visit: node, in-degree, successors.
WalkNode = tuple[str, int, tuple[str, ...]]


class Completion(NamedTuple):
    """A step that succeeded (``complete_step``, ``finish_and_claim``); followed by its planned
    jobs and its walk. Empty strings stand for "none"."""

    run_id: str
    step: str
    node: str
    item_index: str  # a mapped instance's index, or ''
    output: str  # JSON
    state: str  # the state passed on, as JSON, where something reads it; else ''
    chosen: str  # JSON list of the successors a Route chose, or '' for all
    mapped_node: str  # the successor a Map runs once per item, or ''
    mapped_count: int
    map_token: str  # which staged items the Map's instances are created from (MapItems)
    started_at: str
    worker: str
    attempt: int


@dataclass(frozen=True)
class CompletionRequest:
    """Everything recording one succeeded step needs, and its output for the caller.
    ``waiting``: the step was recorded waiting for a signal instead; nothing more to record."""

    completion: Completion
    jobs: tuple[PlannedJob, ...]
    walk: tuple[WalkNode, ...]
    output: dict[str, Any]
    waiting: bool = False
    map_items: MapItems | None = None  # a Map's instances, staged before it is recorded

    def argv(self) -> list[Any]:
        """The completion as the scripts read it."""
        return [*self.completion, *jobs_argv(self.jobs), *walk_argv(self.walk)]


class WaitRecord(NamedTuple):
    """A step whose module returned ``Wait`` (``wait_step``)."""

    run_id: str
    step: str
    name: str  # the signal it waits for
    timeout: str  # seconds, or '' for none
    output: str  # JSON: the step's own output
    resume: str  # JSON: what resuming it needs (see completion.resume_waiting)
    started_at: str
    worker: str
    attempt: int


class Signal(NamedTuple):
    """A signal sent to a run (``signal_run``)."""

    run_id: str
    name: str
    data: str  # JSON
    resume_after: float  # seconds after which the watchdog resumes its waiter (the sender died)


class Failure(NamedTuple):
    """A step that failed for good (``fail_step``)."""

    run_id: str
    step: str
    error: str  # the run's one-line error
    step_error: str  # the step's own, with its traceback
    started_at: str
    worker: str
    attempt: int
    input: str  # the step's input as JSON, kept to retry it


class Cancel(NamedTuple):
    """A run to stop (``cancel_run``): ``canceled``, or ``failed`` past its deadline."""

    run_id: str
    error: str
    status: str


class Claim(NamedTuple):
    """An ezgraph worker's claim (``finish_and_claim``); followed by its queues."""

    worker: str
    claim_ttl: int  # seconds a claimed job's execution lives without a heartbeat
    execution_prefix: str  # the claimed jobs' execution ids are this plus 1, 2, ...
    max_claims: int
    idle_mark_ms: int  # how long an empty claim marks the queues idle
    max_join_input: int  # outputs read for a join's claim at most


class Finished(NamedTuple):
    """A job an ezgraph worker ran (``finish_and_claim``); followed by its completion when
    ``completion`` is 1 (an ezgraph step that succeeded)."""

    job_id: str
    queue: str
    result_ttl: int
    return_value: str  # RQ's pickle of the return value, base64, or ''
    execution: str
    execution_started: str  # epoch seconds
    completion: int


class Claimed(NamedTuple):
    """A job ``finish_and_claim`` claimed: what the step needs of its RQ job."""

    job_id: bytes
    queue: bytes
    data: bytes | None
    timeout: bytes | None
    retries_left: bytes | None
    meta: bytes | None
    result_ttl: bytes | None
    join_input: list[Any] | None  # what read_join_input read for a join's job


class RequeueClaims(NamedTuple):
    """Give back an ezgraph worker's claimed jobs (``requeue_claims``)."""

    worker: str
    max_deaths: int | str  # '' for a live worker giving back its own: nothing is counted


class RequeueStep(NamedTuple):
    """Put a lost step's job back in its queue (``requeue_step``)."""

    run_id: str
    job_id: str
    queue: str
    expected: str  # the RQ status the watchdog saw


class Resume(NamedTuple):
    """Retry a failed run (``resume_run``)."""

    run_id: str


class MapChunk(NamedTuple):
    """Create the next chunk of a map's instances (``create_map_chunk``)."""

    run_id: str
    node: str  # the mapped node


@dataclass(frozen=True)
class MapItems:
    """A Map's instances, staged in Redis before the step is recorded (``map:<token>``): the
    hash fields every instance's job shares, its description's tail (after the step's name),
    and each instance's job data, in item order (built as they are written: no list of them
    is kept)."""

    run_id: str
    node: str
    token: str
    count: int
    shared_fields: Sequence[Any]
    description_tail: str
    data: Iterable[bytes]


class JoinInputRequest(NamedTuple):
    """Read a join's input (``read_join_input``)."""

    spec: str  # the job's join-input spec (JSON of run, predecessors, states)
    offset: int  # the first mapped output to read (counted across the mapped predecessors)
    chunk: int  # how many mapped outputs to read at most


class Event(NamedTuple):
    """An event a step emitted, for its run's stream (``append_event``)."""

    run_id: str
    body: str  # the event as JSON


RECORDS: dict[str, type[tuple[Any, ...]]] = {
    "head": Head,
    "submission": Submission,
    "new_run": NewRun,
    "job": JobHead,
    "completion": Completion,
    "failure": Failure,
    "cancel": Cancel,
    "claim": Claim,
    "finished": Finished,
    "claimed": Claimed,
    "requeue_claims": RequeueClaims,
    "requeue_step": RequeueStep,
    "resume": Resume,
    "join_input_request": JoinInputRequest,
    "event": Event,
    "wait": WaitRecord,
    "signal": Signal,
    "map_chunk": MapChunk,
}
# What Lua reads of the tuning.
LUA_TUNING = (
    "wake_list_max",
    "canceled_ttl",
    "failed_ttl",
    "reply_ttl",
    "expire_chunk",
    "events_max",
    "read_chunk",
    "map_chunk",
    "sweep_chunk",
    "lrem_max",
)

# ezgraph's own fields in an RQ job's hash (RQ and stock workers ignore them).
JOIN_INPUT_FIELD = "ezgraph_join_input"  # a join's job: what to read for its input (JSON)
DEATHS_FIELD = "ezgraph_lost"  # how many workers died holding the job
LEFT_FIELD = "ezgraph_left"  # canceled, and left in its (long) queue until a worker takes it


def lua_header(tuning: Tuning) -> str:
    """``FIELDS`` (each record's field names, in order), ``TUNING`` and ``JOB_FIELD`` (ezgraph's
    fields in RQ's job hashes), as Lua."""
    records = ", ".join(
        f"{name} = {{{', '.join(repr(field) for field in record._fields)}}}"  # type: ignore[attr-defined]
        for name, record in RECORDS.items()
    )
    numbers = ", ".join(f"{name} = {getattr(tuning, name)!r}" for name in LUA_TUNING)
    job_fields = (
        f"join_input = {JOIN_INPUT_FIELD!r}, deaths = {DEATHS_FIELD!r}, left = {LEFT_FIELD!r}"
    )
    return (
        f"local FIELDS = {{{records}}}\nlocal TUNING = {{{numbers}}}\n"
        f"local JOB_FIELD = {{{job_fields}}}\n"
    )


def jobs_argv(jobs: Iterable[PlannedJob]) -> list[Any]:
    """Planned jobs as a count, then per job its :class:`JobHead` and hash fields."""
    jobs = tuple(jobs)
    argv: list[Any] = [len(jobs)]
    for job in jobs:
        argv += [job.step, job.job_id, job.queue, len(job.fields), *job.fields]
    return argv


def submission_argv(submission: Submission, runs: Sequence[tuple[NewRun, PlannedJob]]) -> list[Any]:
    """The ARGV of ``submit_run`` after the head."""
    argv: list[Any] = [*submission, len(runs)]
    for new_run, job in runs:
        argv += [*new_run, job.step, job.job_id, job.queue, len(job.fields), *job.fields]
    return argv


def walk_argv(walk: Iterable[WalkNode]) -> list[Any]:
    """A walk as a count, then per node its name, in-degree, successor count and successors."""
    walk = tuple(walk)
    argv: list[Any] = [len(walk)]
    for node, indegree, successors in walk:
        argv += [node, indegree, len(successors), *successors]
    return argv


def list_argv(items: Sequence[str]) -> list[Any]:
    """A list of strings as its length, then its items."""
    return [len(items), *items]


def finish_and_claim_argv(
    claim: Claim,
    queues: Sequence[str],
    finished: Sequence[tuple[Finished, CompletionRequest | None]],
) -> list[Any]:
    """The ARGV of ``finish_and_claim`` after the head."""
    argv: list[Any] = [*claim, *list_argv(queues), len(finished)]
    for job, request in finished:
        argv += job
        if request is not None:
            argv += request.argv()
    return argv


Status = Literal["ok", "duplicate", "gone", "refused", "lost"]


class Outcome(NamedTuple):
    """What recording a step's end (or a cancel) did: ``ok``, ``duplicate`` (recorded
    before), ``gone`` (no such run), ``refused`` (a cancel of a run that had ended or stopped
    otherwise) or ``lost`` (a job its worker no longer held: another worker took it over), and
    whether this call ended the run."""

    status: Status
    run_ended: bool

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> Outcome:
        """From a script's ``{outcome, run ended (0/1)}``."""
        return cls(as_text(reply[0]) or "", bool(int(reply[1])))  # type: ignore[arg-type]


def parse_finish_and_claim(reply: Sequence[Any]) -> tuple[list[Outcome | None], list[Claimed]]:
    """``finish_and_claim``'s reply: an outcome per finished job (None for a job that was no
    ezgraph step), and the claimed jobs."""
    outcomes = [Outcome.parse(raw) if raw else None for raw in reply[0]]
    width = len(Claimed._fields)
    rows = reply[1:]
    claimed = [Claimed(*rows[n : n + width]) for n in range(0, len(rows), width)]
    return outcomes, claimed


@dataclass(frozen=True)
class Resumed:
    """What ``resume_run`` did: ``ok`` with the steps requeued, or why it refused: ``gone``
    (no run), ``status`` (the run is not failed), ``running`` (steps still running), ``job``
    (a step's job cannot be requeued: step, job status) or ``empty`` (nothing to run)."""

    status: str
    details: tuple[str, ...] = ()

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> Resumed:
        """From ``resume_run``'s reply."""
        return cls(as_text(reply[0]) or "", tuple(as_text(r) or "" for r in reply[1:]))


class JoinInputError(ValueError):
    """Raised when a join's input was read for other predecessors or map counts than the
    graph's (its job was made by another version of the graph)."""


@dataclass(frozen=True)
class JoinInput:
    """A join's input as Redis holds it (JSON texts, None where absent)."""

    statuses: dict[str, str]
    outputs: dict[str, str | None]
    states: dict[str, str | None]
    mapped: dict[str, list[str | None]]

    @classmethod
    def parse(
        cls, predecessors: Sequence[str], states: Sequence[str], reply: Sequence[Any]
    ) -> JoinInput:
        """From ``run.read_join_input``'s five replies: the predecessors' statuses, their
        outputs, the kept states, the map counts, and the mapped instances' outputs.

        Raises:
            JoinInputError: when they were read for other lists than these.
        """
        statuses, outputs, kept, counts, mapped_values = reply
        n = len(predecessors)
        if not (len(statuses) == len(outputs) == len(counts) == n and len(kept) == len(states)):
            raise JoinInputError("read for other predecessors")
        mapped_counts = {
            p: int(c) for p, c in zip(predecessors, counts, strict=True) if c is not None
        }
        if sum(mapped_counts.values()) != len(mapped_values):
            raise JoinInputError("read for other map counts")
        values = [as_text(v) for v in mapped_values]
        mapped: dict[str, list[str | None]] = {}
        for predecessor, count in mapped_counts.items():
            mapped[predecessor], values = values[:count], values[count:]
        return cls(
            statuses={p: as_text(v) or "" for p, v in zip(predecessors, statuses, strict=True)},
            outputs={p: as_text(v) for p, v in zip(predecessors, outputs, strict=True)},
            states={name: as_text(v) for name, v in zip(states, kept, strict=True)},
            mapped=mapped,
        )


def join_input_spec(run_id: str, predecessors: Sequence[str], states: Sequence[str]) -> str:
    """What a join's job carries for ``run.read_join_input``: which run, predecessors and
    kept states to read."""
    return json.dumps({"run": run_id, "predecessors": predecessors, "states": states})


def as_text(value: Any) -> str | None:
    """A Redis reply as text (None stays None)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
