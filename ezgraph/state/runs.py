"""Per-run bookkeeping in Redis: one Lua call per state change, so a worker can die anywhere.

Keys, all under the settings' key prefix (default ``ezgraph``):

- ``<p>:run:<id>`` hash: status, start, package, graph (JSON), input, created_at, ended_at,
  pending (steps created and not yet ended), error.
- ``<p>:run:<id>:steps`` hash: ``<step>.<field>`` for status, job, output, error, started_at,
  ended_at, worker, attempts, input (failed steps), map (item count of a mapped node), inflight
  (1: the step was in flight when its run stopped, so if it finishes it creates no successors).
- ``<p>:run:<id>:state`` hash: the state a step passed on, kept where a join or the result needs it.
- ``<p>:run:<id>:join`` hash: join arrivals (``left:<node>``, ``any:<node>``) and map counters.
- ``<p>:run:<id>:jobs`` hash: RQ job id -> queue, for every step job of the run.
- ``<p>:run:<id>:stopped`` pub/sub channel: a message when the run stops (its status becomes
  failed or canceled) and when it ends, for :meth:`GraphOrchestrator.wait` to wake on.
- ``<p>:runs:live`` / ``<p>:runs:unsaved`` sorted sets: runs in flight / ended and not yet in SQL.

The scripts live in ``ezgraph/lua``; each is the shared prelude ``common.lua`` plus its body.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import hiredis
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

RQ_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
STEP_FIELDS = ("status", "job", "output", "error", "started_at", "ended_at", "worker", "attempts")


_second: tuple[int, str] = (0, "")  # the last whole second formatted, and its text


def utcnow_iso() -> str:
    """Now, in the date format RQ stores (``RQ_DATE_FORMAT``). The part up to the second is
    formatted once a second: a step stamps several dates, and strftime took 2-3 us each."""
    global _second
    now = time.time()
    whole = int(now)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((now - whole) * 1_000_000):06d}Z"


def _load_script(name: str) -> str:
    lua = resources.files("ezgraph.state") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


_SOURCES = {
    name: _load_script(name)
    for name in (
        "submit",
        "complete",
        "fail",
        "ensure",
        "fast",
        "requeue_claimed",
        "requeue_job",
        "due",
        "saved",
        "resume",
    )
}


@dataclass(frozen=True)
class PreparedJob:
    """An RQ job ready to be created by a script: its step, id, queue and hash fields."""

    step: str
    job_id: str
    queue: str
    fields: Sequence[Any]

    def argv(self) -> list[Any]:
        """The job as the scripts read it from ARGV."""
        return [self.step, self.job_id, self.queue, len(self.fields), *self.fields]


def jobs_argv(jobs: Iterable[PreparedJob]) -> list[Any]:
    """Prebuilt jobs as a count followed by each job's ARGV."""
    jobs = list(jobs)
    argv: list[Any] = [len(jobs)]
    for job in jobs:
        argv.extend(job.argv())
    return argv


@dataclass(frozen=True)
class Outcome:
    """What a script reported: ``ok``, ``duplicate`` (recorded before), ``gone`` (no run) or,
    for a run-level :meth:`RunBook.fail`, ``refused`` (the run had ended or stopped otherwise)."""

    status: str
    run_ended: bool
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resumed:
    """What the resume script reported: ``ok`` with the steps requeued, or why it refused:
    ``gone`` (no run), ``status`` (the run is not failed), ``running`` (steps still running),
    ``job`` (a step's job cannot be requeued: step, job status) or ``empty`` (nothing to run)."""

    status: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveRun:
    """A run as Redis holds it: its header, its steps' fields and the states it kept."""

    run_id: str
    header: dict[str, str]
    steps: dict[str, dict[str, str]]
    states: dict[str, str]


# The hash field of a job that gathers its input (a join): which run, predecessors and kept
# states to read for it, as JSON. fast.lua reads them as it claims the job.
GATHER_FIELD = "ezgraph_gather"


@dataclass(frozen=True)
class Gathered:
    """A join's inputs as Redis holds them (JSON texts, None where absent)."""

    statuses: dict[str, str]
    outputs: dict[str, str | None]
    states: dict[str, str | None]
    mapped: dict[str, list[str | None]]


class RunBook:
    """The Redis side of runs: create, record step outcomes, read, and hand over to SQL."""

    def __init__(self, connection: Redis, prefix: str = "ezgraph") -> None:
        self.connection = connection
        self.prefix = prefix
        self._local = threading.local()  # this thread's connection for script calls
        self._scripts: dict[str, Script] = {
            name: connection.register_script(source) for name, source in _SOURCES.items()
        }

    def run_key(self, run_id: str) -> str:
        """The run's header key."""
        return f"{self.prefix}:run:{run_id}"

    def stopped_channel(self, run_id: str) -> str:
        """The channel a message is published on when the run stops or ends."""
        return f"{self.run_key(run_id)}:stopped"

    def run_keys(self, run_id: str) -> list[str]:
        """Every key of one run."""
        base = self.run_key(run_id)
        return [base, *(f"{base}:{part}" for part in ("steps", "state", "join", "jobs"))]

    def call(self, name: str, run_id: str, *args: Any) -> Any:
        """Run script ``name`` with the prelude's arguments (prefix, run id, now) and ``args``."""
        head = [self.prefix, run_id, utcnow_iso(), repr(time.time())]
        return self._evalsha(self._scripts[name], [*head, *args])

    def _evalsha(self, script: Script, argv: list[Any]) -> Any:
        """EVALSHA sent and read directly (:meth:`_raw`), once or more per step. redis-py takes
        over whenever something is unusual: the script not loaded (after a Redis restart or
        SCRIPT FLUSH), or a connection that failed. Re-running a script after a lost reply is
        safe, as with redis-py's own retries: each records an outcome once (``duplicate`` after).
        """
        try:
            return self._raw([("EVALSHA", script.sha, 0, *argv)])[0]
        except (NoScriptError, RedisConnectionError, RedisTimeoutError):
            return script(args=argv)

    def _raw(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, sent in one write, past redis-py's command and
        pipeline layers (30-40 us of CPU a call here), on this thread's own connection
        (:meth:`_own_connection`). A connection that failed, or that still owes replies after
        an error reply, is closed; the next call opens it again.
        """
        connection = self._own_connection()
        replies: list[Any] = []
        try:
            # hiredis packs what redis-py's serializer would, without its per-argument checks.
            packed = b"".join(hiredis.pack_command(command) for command in commands)
            connection.send_packed_command([packed])  # type: ignore[no-untyped-call]
            for _ in commands:
                replies.append(connection.read_response())
            return replies
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        except RedisError:
            if len(replies) + 1 < len(commands):  # replies after the failed one are unread
                connection.disconnect()  # type: ignore[no-untyped-call]
            raise

    def _own_connection(self) -> Any:
        """A connection of the client's pool that this thread keeps for its script calls.

        Taking a connection from the pool and giving it back cost 30 us of CPU and a poll()
        per call here (redis-py checks that the socket holds no stray data, and counts the
        move): as much as the rest of a fast worker's call. A connection only this thread
        uses, that never returns with unread replies, needs neither. A forked child takes its
        own (the pool starts afresh there).
        """
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.pid != os.getpid():
            connection = self.connection.connection_pool.get_connection()
            self._local.connection = connection
        return connection

    def submit(
        self,
        run_id: str,
        start: str,
        package: str,
        graph_json: str,
        input_json: str,
        joins: dict[str, int],
        job: PreparedJob,
    ) -> bool:
        """Create the run and its first step; False when the run id is taken.

        ``joins`` gives the arrivals a join waits for when some predecessors cannot run from
        this start node (they count as skipped from the outset).
        """
        created = self.call(
            "submit",
            run_id,
            start,
            package,
            graph_json,
            input_json,
            json.dumps(joins or {}),
            *jobs_argv([job]),
        )
        return bool(created)

    @staticmethod
    def completion_args(
        step: str,
        node: str,
        index: int | None,
        output_json: str,
        state_json: str | None,
        chosen: Sequence[str] | None,
        mapped: tuple[str, int] | None,
        started_at: str,
        worker: str,
        attempt: int,
        jobs: Iterable[PreparedJob],
    ) -> list[Any]:
        """The arguments of ``complete_step`` (common.lua), in its order."""
        return [
            step,
            node,
            "" if index is None else index,
            output_json,
            state_json or "",
            "" if chosen is None else json.dumps(list(chosen)),
            mapped[0] if mapped else "",
            mapped[1] if mapped else 0,
            started_at,
            worker,
            attempt,
            *jobs_argv(jobs),
        ]

    def complete(self, run_id: str, *args: Any) -> Outcome:
        """Record a finished step and create its ready successors, atomically.

        ``args`` are :meth:`completion_args`.
        """
        return outcome_of(self.call("complete", run_id, *args))

    def fail(
        self,
        run_id: str,
        step: str,
        error: str,
        started_at: str = "",
        worker: str = "",
        attempt: int = 0,
        input_json: str = "",
        run_status: str = "failed",
        step_error: str | None = None,
    ) -> Outcome:
        """Record a step that failed for good (or, with ``step=''``, a cancel) and stop the run.

        ``error`` is the run's one-line error; ``step_error`` the step's own (with traceback).
        """
        reply = self.call(
            "fail",
            run_id,
            step,
            run_status,
            error,
            started_at,
            worker,
            attempt,
            input_json,
            step_error or error,
        )
        return outcome_of(reply)

    def ensure(self, run_id: str, jobs: Iterable[PreparedJob]) -> int:
        """Create the jobs of steps found ready without one; returns how many were created."""
        return int(self.call("ensure", run_id, *jobs_argv(jobs)))

    def resume(self, run_id: str) -> Resumed:
        """Set a failed run running again and requeue the jobs of its steps to run again."""
        reply = self.call("resume", run_id)
        return Resumed(as_text(reply[0]) or "", tuple(as_text(r) or "" for r in reply[1:]))

    def read(self, run_id: str) -> LiveRun | None:
        """The run as Redis holds it, or None."""
        return self.read_many([run_id])[0]

    def read_many(self, run_ids: Sequence[str]) -> list[LiveRun | None]:
        """Several runs in one round trip (None for a run Redis no longer holds)."""
        commands: list[tuple[Any, ...]] = []
        for run_id in run_ids:
            base = self.run_key(run_id)
            commands += [("HGETALL", key) for key in (base, f"{base}:steps", f"{base}:state")]
        replies = [_text_dict(reply) for reply in self.read_pipelined(commands)]
        runs: list[LiveRun | None] = []
        for n, run_id in enumerate(run_ids):
            header, raw_steps, states = replies[3 * n : 3 * n + 3]
            if not header:
                runs.append(None)
                continue
            runs.append(LiveRun(run_id, header, _by_step(raw_steps), states))
        return runs

    def read_steps(self, run_ids: Sequence[str]) -> list[dict[str, dict[str, str]]]:
        """The steps of several runs (as :attr:`LiveRun.steps`) in one round trip, without
        their headers and states; empty for a run Redis no longer holds."""
        replies = self.read_pipelined([("HGETALL", f"{self.run_key(r)}:steps") for r in run_ids])
        return [_by_step(_text_dict(reply)) for reply in replies]

    def read_pipelined(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Raw replies of ``commands`` in one round trip (:meth:`_raw`; for the hand-over to
        SQL, where redis-py's pipeline layer cost a third of reading a run). On any error
        redis-py's pipeline, with its retries, sends them again: so only commands that may run
        twice, reads or the watchdog's ``SET NX`` and ``PTTL``."""
        try:
            return self._raw(commands)
        except (RedisError, OSError):
            pipe = self.connection.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            return list(pipe.execute())

    def gather(self, run_id: str, predecessors: Sequence[str], states: Sequence[str]) -> Gathered:
        """What a join needs: its predecessors' statuses and outputs, the kept ``states``, and
        the outputs of every instance of a mapped predecessor, in item order (the fast worker
        reads the same as it claims the join: :func:`gathered_from`)."""
        base = self.run_key(run_id)
        pipe = self.connection.pipeline(transaction=False)
        pipe.hmget(f"{base}:steps", [f"{p}.status" for p in predecessors])
        pipe.hmget(f"{base}:steps", [f"{p}.output" for p in predecessors])
        pipe.hmget(f"{base}:state", list(states))
        pipe.hmget(f"{base}:join", [f"mapn:{p}" for p in predecessors])
        statuses, outputs, kept, counts = pipe.execute()
        fields = [
            f"{p}-{i}.output"
            for p, count in zip(predecessors, counts, strict=True)
            if count is not None
            for i in range(int(count))
        ]
        mapped = self.connection.hmget(f"{base}:steps", fields) if fields else []
        return gathered_from(predecessors, states, [statuses, outputs, kept, counts, mapped])

    def unsaved(self, limit: int = 500, older_than: float = 0.0) -> list[str]:
        """Ended runs not yet in SQL, oldest first (those ended over ``older_than`` s ago).

        A run's score is the time of the worker that ended it: with ``older_than`` 0 every run
        is taken, whatever the clocks of that worker and this machine say."""
        cutoff: float | str = time.time() - older_than if older_than > 0 else "+inf"
        ids = self.connection.zrangebyscore(self._unsaved_key, "-inf", cutoff, start=0, num=limit)
        return [as_text(i) or "" for i in ids]

    def unsaved_count(self) -> int:
        """How many ended runs wait to be written to SQL."""
        return int(self.connection.zcard(self._unsaved_key))

    @property
    def _unsaved_key(self) -> str:
        return f"{self.prefix}:runs:unsaved"

    def live(self) -> list[str]:
        """Runs in flight, oldest first."""
        return [as_text(i) or "" for i in self.connection.zrange(f"{self.prefix}:runs:live", 0, -1)]

    def mark_saved(self, written: Sequence[tuple[str, str]], ttl: int) -> None:
        """Runs are in SQL: drop them from the unsaved set and let their keys expire, unless a
        run's end changed since it was read (``written``: run id, the ``ended_at`` written;
        see ``saved.lua``)."""
        if written:
            self.call("saved", "", ttl, *(value for pair in written for value in pair))


def gathered_from(
    predecessors: Sequence[str], states: Sequence[str], replies: Sequence[Any]
) -> Gathered:
    """A join's inputs from the five replies :meth:`RunBook.gather` or a claim (``fast.lua``)
    read: predecessors' statuses, their outputs, the kept states, the map counts, and the
    mapped instances' outputs. Raises ValueError when they were read for other lists (the
    job was made by another version of the graph)."""
    statuses, outputs, kept, counts, mapped_values = replies
    n = len(predecessors)
    if not (len(statuses) == len(outputs) == len(counts) == n and len(kept) == len(states)):
        raise ValueError("gathered for other predecessors")
    mapped_counts = {p: int(c) for p, c in zip(predecessors, counts, strict=True) if c is not None}
    if sum(mapped_counts.values()) != len(mapped_values):
        raise ValueError("gathered for other map counts")
    values = [as_text(v) for v in mapped_values]
    mapped: dict[str, list[str | None]] = {}
    for pred, count in mapped_counts.items():
        mapped[pred], values = values[:count], values[count:]
    return Gathered(
        statuses={p: as_text(v) or "" for p, v in zip(predecessors, statuses, strict=True)},
        outputs={p: as_text(v) for p, v in zip(predecessors, outputs, strict=True)},
        states={name: as_text(v) for name, v in zip(states, kept, strict=True)},
        mapped=mapped,
    )


def outcome_of(reply: Sequence[Any]) -> Outcome:
    """Parse a script's ``{outcome, run ended, missing steps...}`` reply."""
    status = as_text(reply[0]) or ""
    return Outcome(status, bool(int(reply[1])), tuple(as_text(r) or "" for r in reply[2:]))


def as_text(value: Any) -> str | None:
    """A Redis reply as text (None stays None)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_step(fields: dict[str, str]) -> dict[str, dict[str, str]]:
    """A run's steps hash (``<step>.<field>`` keys) as ``{step: {field: value}}``."""
    steps: dict[str, dict[str, str]] = {}
    for name, value in fields.items():
        step, _, field = name.rpartition(".")
        steps.setdefault(step, {})[field] = value
    return steps


def _text_dict(reply: Any) -> dict[str, str]:
    """A raw HGETALL reply (a flat list in RESP2, a map in RESP3) as a dict of text."""
    if isinstance(reply, dict):
        return {k.decode(): v.decode() for k, v in reply.items()}
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
