"""Runs in Redis: create them, record their steps' ends, read them (decoded by
:mod:`ezgraph.state.live`), hand them over to SQL.

Every change is one Lua script call (:mod:`ezgraph.state.protocol` says what each takes and
returns), so a worker can die at any instant without leaving a run half-changed. The keys are
named by :mod:`ezgraph.state.keys`.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from redis import Redis

from ..model.records import (
    EventRecord,
    StepRecord,
)
from .keys import Keys
from .live import (
    RECORD_FIELDS,
    LiveRun,
    by_step,
    graph_shape,
    parse_stream,
    steps_in_order,
    text_dict,
)
from .protocol import (
    LEFT_FIELD,
    Cancel,
    Claim,
    Claimed,
    CompletionRequest,
    Event,
    Failure,
    Finished,
    JoinInput,
    JoinInputRequest,
    MapChunk,
    MapItems,
    NewRun,
    Outcome,
    PlannedJob,
    RequeueClaims,
    RequeueStep,
    Resume,
    Resumed,
    Signal,
    Submission,
    Submitted,
    WaitRecord,
    as_text,
    finish_and_claim_argv,
    list_argv,
    parse_finish_and_claim,
    submission_argv,
)
from .redis_io import ScriptRunner

BIG_HASH = 5_000  # fields of a hash read in chunks (HSCAN) rather than one HGETALL
_WATCHED_FIELDS = ("status", "job", "recovered")  # what the watchdog reads of a step
WATCH_READ = 1_200  # fields of a step hash one HMGET reads at most (about 2 ms of Redis)
_ENDED = {"finished", "failed", "skipped", "canceled"}
KEPT_STATES = 8  # states kept_state remembers (a worker serves a few maps at once)


class RedisRuns:
    """The Redis side of runs (the SQL side is :class:`~ezgraph.state.sql.Store`)."""

    def __init__(
        self, connection: Redis, keys: Keys, scripts: ScriptRunner, patience: float
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.scripts = scripts
        self.patience = patience  # how long a change waits for a Redis that does not answer
        self._kept: dict[tuple[str, str], str] = {}  # kept_state's last few, oldest first
        self._kept_lock = threading.Lock()

    # -- changes (one script each) -----------------------------------------------------------

    def submit(
        self, submission: Submission, runs: Sequence[tuple[NewRun, PlannedJob]]
    ) -> list[Submitted]:
        """Create runs and their first steps (or claim their idempotency keys), in one call."""
        argv = submission_argv(submission, runs)
        reply = self.scripts.call("submit_run", *argv, patience=self.patience)
        return Submitted.parse_all(reply)

    def submit_each(
        self, submission: Submission, chunks: Iterable[Sequence[tuple[NewRun, PlannedJob]]]
    ) -> Iterator[list[Submitted]]:
        """:meth:`submit` for each chunk, pipelined: a chunk is built while Redis creates the
        chunk before it. Only for runs without idempotency keys (their claims need a second
        call, after SQL is read)."""
        argvs = (submission_argv(submission, runs) for runs in chunks)
        for reply in self.scripts.call_each("submit_run", argvs, patience=self.patience):
            yield Submitted.parse_all(reply)

    def complete(self, request: CompletionRequest) -> Outcome:
        """Record a step that succeeded and create its ready successors, atomically."""
        reply = self.scripts.call(
            "complete_step", *request.argv(), patience=self.patience, wait_for_memory=True
        )
        return Outcome.parse(reply)

    def stage_map(self, items: MapItems, chunk: int, ttl: int) -> None:
        """Write a Map's instances to its run's map hash (``chunk`` per command, pipelined:
        no command blocks Redis for long), before the step that returned it is recorded.
        Kept ``ttl`` seconds at most: the map's creation deletes them, or
        :meth:`discard_map` when the step's record was refused."""
        key = self.keys.map_items(items.run_id, items.token)
        head: list[Any] = ["fields", len(items.shared_fields)]
        head += ["description", items.description_tail]
        for n, value in enumerate(items.shared_fields, start=1):
            head += [f"f:{n}", value]
        pipe = self.connection.pipeline(transaction=False)
        pipe.hset(key, items=head)
        pipe.expire(key, ttl)
        data = iter(items.data)
        index = 0
        while batch := list(itertools.islice(data, chunk)):
            pipe.hset(key, mapping=dict(enumerate(batch, start=index)))
            index += len(batch)
            if len(pipe) >= 16:
                pipe.execute()
        pipe.execute()

    def create_map_chunk(self, run_id: str, node: str) -> tuple[bool, bool]:
        """Create the next chunk of a map's instances; returns (instances are left to create,
        this call ended the run)."""
        more, ended = self.scripts.call(
            "create_map_chunk",
            *MapChunk(run_id, node),
            patience=self.patience,
            wait_for_memory=True,
        )
        return bool(int(more)), bool(int(ended))

    def discard_map(self, run_id: str, token: str) -> None:
        """Drop a Map's staged instances that no map will create (its step's record was
        refused: a duplicate, or its run is gone)."""
        self.connection.unlink(self.keys.map_items(run_id, token))

    def maps_to_resume(self, older_than: float) -> list[tuple[str, str]]:
        """The maps whose creation made no progress for ``older_than`` seconds (by this
        machine's clock against the creating worker's): (run id, node)."""
        members = self.connection.zrangebyscore(
            self.keys.maps_creating, "-inf", time.time() - older_than, start=0, num=100
        )
        return [tuple((as_text(m) or "").split("/", 1)) for m in members]  # type: ignore[misc]

    def dropped_from_queue(self, run_id: str, step: str, job_key: str) -> bool:
        """Whether a stock worker popped a job canceled while it waited (or whose run left
        Redis): then it is no longer marked left in its queue, and must not run."""
        status = self.connection.hget(self.keys.steps(run_id), f"{step}.status")
        if status is not None and status != b"canceled":
            return False
        self.connection.hdel(job_key, LEFT_FIELD)
        return True

    def sweep(self, run_id: str) -> tuple[bool, bool]:
        """Sweep the next chunk of a stopped run's jobs; returns (jobs are left to sweep, this
        call ended the run)."""
        more, ended = self.scripts.call("sweep_run", run_id, patience=self.patience)
        return bool(int(more)), bool(int(ended))

    def runs_sweeping(self, limit: int = 100) -> list[str]:
        """Stopped runs whose jobs are still being swept, the least recently swept first."""
        members = self.connection.zrange(self.keys.runs_sweeping, 0, limit - 1)
        return [as_text(member) or "" for member in members]

    def fail_step(self, failure: Failure) -> Outcome:
        """Record a step that failed for good, and stop its run."""
        return Outcome.parse(
            self.scripts.call("fail_step", *failure, patience=self.patience, wait_for_memory=True)
        )

    def cancel(self, run_id: str, error: str, status: str = "canceled") -> Outcome:
        """Stop a run as ``status`` (canceled; failed, past its deadline); its waiting steps
        are canceled in RQ."""
        request = Cancel(run_id, error, status)
        reply = self.scripts.call("cancel_run", *request, patience=self.patience)
        return Outcome.parse(reply)

    def finish_and_claim(
        self,
        claim: Claim,
        queues: Sequence[str],
        finished: Sequence[tuple[Finished, CompletionRequest | None]],
        until: threading.Event | None = None,
    ) -> tuple[list[Outcome | None], list[Claimed]]:
        """An ezgraph worker's one call: finish the jobs it ran (recording their steps) and
        claim the next ones of ``queues``; sent again until Redis answers (or ``until``)."""
        argv = finish_and_claim_argv(claim, queues, finished)
        reply = self.scripts.call(
            "finish_and_claim", *argv, patience=math.inf, until=until, wait_for_memory=True
        )
        return parse_finish_and_claim(reply)

    def requeue_claims(
        self, worker: str, max_deaths: int | None, until: threading.Event | None = None
    ) -> tuple[list[str], list[str]]:
        """Give back a worker's claimed jobs; returns the job ids requeued, and those failed
        (held by more than ``max_deaths`` dead workers; None: a live worker's own, uncounted).
        Sent again while Redis does not answer, for the client's patience or until ``until``."""
        request = RequeueClaims(worker, "" if max_deaths is None else max_deaths)
        requeued, failed = self.scripts.call(
            "requeue_claims", *request, patience=self.patience, until=until
        )
        return [as_text(i) or "" for i in requeued], [as_text(i) or "" for i in failed]

    def requeue_step(self, run_id: str, job_id: str, queue: str, expected: str) -> bool:
        """Put a lost step's job back at the front of its queue, if it is still ``expected``."""
        request = RequeueStep(run_id, job_id, queue, expected)
        return bool(self.scripts.call("requeue_step", *request))

    def enqueue_due_retries(self, queues: Sequence[str]) -> int:
        """Move retries whose delay has passed back to their queues; returns how many."""
        return int(self.scripts.call("enqueue_due_retries", *list_argv(queues)))

    def resume(self, run_id: str) -> Resumed:
        """Set a failed run running again and requeue the jobs of its steps to run again."""
        return Resumed.parse(
            self.scripts.call("resume_run", *Resume(run_id), patience=self.patience)
        )

    def wait_step(self, wait: WaitRecord) -> tuple[str, str]:
        """Record a step waiting for its signal, unless the signal came first; returns
        ``wait_step``'s reply: (``signaled``, the data) / (``waiting``, '') / (``taken``, the
        step waiting for that name) / (``gone``, '')."""
        reply = self.scripts.call("wait_step", *wait, patience=self.patience, wait_for_memory=True)
        return as_text(reply[0]) or "", (as_text(reply[1]) or "") if len(reply) > 1 else ""

    def signal(self, signal: Signal) -> tuple[str, str]:
        """Keep a signal in its run's mailbox; returns (``ok``, the waiting step or '') /
        (``duplicate``, '') / (``ended``, the run's status) / (``gone``, '')."""
        reply = self.scripts.call("signal_run", *signal, patience=self.patience)
        return as_text(reply[0]) or "", (as_text(reply[1]) or "") if len(reply) > 1 else ""

    def read_wait(self, run_id: str, step: str) -> tuple[dict[str, str], str | None]:
        """A step's fields (status, wait, output, resume, ...) and the data of the signal it
        waits for (None: not sent yet)."""
        names = ("status", "wait", "output", "resume", "started_at", "worker", "attempts")
        values = self.connection.hmget(self.keys.steps(run_id), [f"{step}.{n}" for n in names])
        mine = {n: as_text(v) or "" for n, v in zip(names, values, strict=True) if v is not None}
        name = mine.get("wait")
        data = self.connection.hget(self.keys.signals(run_id), f"signal:{name}") if name else None
        return mine, as_text(data) if data is not None else None

    def waits_due(self, limit: int) -> list[tuple[str, str]]:
        """Waiting steps (run id, step) due a look: past their deadline, or signaled and not
        resumed by their sender."""
        members = self.connection.zrange(
            self.keys.waiting_steps, "-inf", time.time(), byscore=True, offset=0, num=limit
        )
        due = []
        for member in members:
            run_id, _, step = (as_text(member) or "").partition(" ")
            due.append((run_id, step))
        return due

    def unwatch_wait(self, run_id: str, step: str) -> None:
        """Drop a step from the waiting set (it was resumed, failed or ended)."""
        self.connection.zrem(self.keys.waiting_steps, f"{run_id} {step}")

    def append_event(self, run_id: str, body: str) -> str | None:
        """Append an event (JSON) to the run's stream; returns its id, None when the run is
        gone from Redis."""
        reply = self.scripts.call("append_event", *Event(run_id, body), patience=self.patience)
        return as_text(reply) if reply else None

    def mark_saved(self, written: Sequence[tuple[str, str]], ttl: int) -> int:
        """Runs are in SQL: drop them from the unsaved set and let their keys and their RQ jobs'
        expire in ``ttl`` seconds, unless a run's end changed since it was read (``written``:
        run id, the ``ended_at`` written). A call sets a chunk of jobs to expire at most:
        returns how many runs still have jobs to set (:meth:`expire_saved` goes on)."""
        pairs = (value for pair in written for value in pair)
        _marked, left = self.scripts.call("mark_saved", ttl, *pairs)
        return int(left)

    def expire_saved(self, ttl: int) -> int:
        """Go on setting the RQ jobs of saved runs to expire, until none is left (each call a
        chunk, so that no call blocks Redis for long); returns how many calls it took."""
        calls = 1
        while self.mark_saved((), ttl):
            calls += 1
        return calls

    # -- reads -------------------------------------------------------------------------------

    def read_join_input(
        self, spec: str, predecessors: Sequence[str], states: Sequence[str], chunk: int
    ) -> JoinInput:
        """What a join reads of its predecessors (what a claim reads for it, read now), its
        mapped outputs ``chunk`` per call, in item order (each call reads a chunk only, so that
        no call blocks Redis for long; the outputs do not change once the join is ready)."""
        reply = self.scripts.call("read_join_input", *JoinInputRequest(spec, 0, chunk))
        if not reply:
            return JoinInput.parse(predecessors, states, reply)
        total = sum(int(count) for count in reply[3] if count is not None)
        mapped = [as_text(value) for value in reply[4]]  # as text per chunk: one copy held
        while len(mapped) < total:
            more = self.scripts.call("read_join_input", *JoinInputRequest(spec, len(mapped), chunk))
            if not more or not more[4]:
                break  # the run left Redis meanwhile: parse() says the counts differ
            mapped += [as_text(value) for value in more[4]]
        return JoinInput.parse(predecessors, states, [*reply[:4], mapped])

    def kept_state(self, run_id: str, step: str) -> str | None:
        """The state ``step`` of ``run_id`` kept (JSON), or None. A mapper's does not change
        while its instances run, so the last few read are remembered: a Map's instances read
        their mapper's once per worker, not once per item."""
        found = self._kept.get((run_id, step))
        if found is None:
            found = as_text(self.connection.hget(self.keys.state(run_id), step))
            if found is not None:
                with self._kept_lock:
                    self._kept[(run_id, step)] = found
                    while len(self._kept) > KEPT_STATES:
                        del self._kept[next(iter(self._kept))]
        return found

    def read(self, run_id: str) -> LiveRun | None:
        """The run as Redis holds it, or None."""
        return self.read_many([run_id])[0]

    def read_many(self, run_ids: Sequence[str], events: bool = False) -> list[LiveRun | None]:
        """Several runs in two round trips (None for a run Redis no longer holds); a wide
        map's steps hash is read a chunk per call (:meth:`read_hashes`). ``events``: with their
        events (the whole capped stream: the writer stores them), in one more."""
        keys = self.keys
        hashes = self.read_hashes(
            [k for r in run_ids for k in (keys.run(r), keys.steps(r), keys.state(r))]
        )
        streams = (
            self.scripts.read_pipelined([("XRANGE", keys.events(r), "-", "+") for r in run_ids])
            if events
            else []
        )
        runs: list[LiveRun | None] = []
        for n, run_id in enumerate(run_ids):
            header, raw_steps, states = hashes[3 * n : 3 * n + 3]
            stream = parse_stream(streams[n]) if events else ()
            runs.append(
                LiveRun(run_id, header, by_step(raw_steps), states, stream) if header else None
            )
        return runs

    def wide_runs(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` whose steps hash is wide (a big map's), which the hand-over
        reads a chunk at a time (:meth:`read_wide`, :meth:`wide_steps`)."""
        lengths = self.scripts.read_pipelined([("HLEN", self.keys.steps(r)) for r in run_ids])
        return {r for r, n in zip(run_ids, lengths, strict=True) if int(n) > BIG_HASH}

    def read_wide(self, run_id: str) -> LiveRun | None:
        """A wide run without its steps: its header, its events and the states of its last
        nodes (its result), in one round trip and one HMGET."""
        keys = self.keys
        header_reply, stream = self.scripts.read_pipelined(
            [("HGETALL", keys.run(run_id)), ("XRANGE", keys.events(run_id), "-", "+")]
        )
        header = text_dict(header_reply)
        if not header:
            return None
        succ = graph_shape(header["graph"])["succ"]
        last = [node for node in succ if not succ[node]]
        values = self.connection.hmget(keys.state(run_id), last) if last else []
        states = {n: v for n, v in zip(last, (as_text(v) for v in values), strict=True) if v}
        return LiveRun(run_id, header, {}, states, parse_stream(stream))

    def wide_steps(self, live: LiveRun, chunk: int) -> Iterator[list[StepRecord]]:
        """A wide run's step records in order, ``chunk`` at most per list, each list read in
        pipelined HMGETs: the hand-over never holds the whole map."""
        return steps_in_order(
            graph_shape(live.header["graph"]),
            lambda names: self._step_fields(live.run_id, names, RECORD_FIELDS),
            chunk,
            encoded=True,
        )

    def read_events(
        self, run_id: str, after: str, count: int
    ) -> tuple[dict[str, str], dict[str, dict[str, str]], tuple[EventRecord, ...]]:
        """In one round trip: the run's header (status, ended_at; empty when Redis no longer
        holds it), its steps, and up to ``count`` of its events after id ``after``."""
        keys = self.keys
        header, steps, stream = self.scripts.read_pipelined(
            [
                ("HMGET", keys.run(run_id), "status", "ended_at"),
                ("HGETALL", keys.steps(run_id)),
                ("XRANGE", keys.events(run_id), f"({after}", "+", "COUNT", count),
            ]
        )
        fields = {
            name: value.decode()
            for name, value in zip(("status", "ended_at"), header, strict=True)
            if value is not None
        }
        return fields, by_step(text_dict(steps)), parse_stream(stream)

    def read_steps(self, run_ids: Sequence[str]) -> list[dict[str, dict[str, str]]]:
        """The steps of several runs (as :attr:`LiveRun.steps`) in two round trips; empty for
        a run Redis no longer holds."""
        replies = self.read_hashes([self.keys.steps(r) for r in run_ids])
        return [by_step(reply) for reply in replies]

    def read_waiting_window(
        self, run_ids: Sequence[str], width: int
    ) -> list[dict[str, dict[str, str]]]:
        """The steps of several live runs, as :meth:`read_steps`, but of a wide run (a steps
        hash over ``BIG_HASH`` fields) only its graph's nodes and, of each mapped node, the
        ``width`` instances from the lowest not yet ended (kept in its join hash as
        ``watchlow:<node>``, moved on as they end): what a watchdog pass looks at, at a cost
        that does not grow with the map."""
        keys = self.keys
        lengths = self.scripts.read_pipelined([("HLEN", keys.steps(r)) for r in run_ids])
        wide = {r for r, n in zip(run_ids, lengths, strict=True) if int(n) > BIG_HASH}
        narrow = [r for r in run_ids if r not in wide]
        read = dict(zip(narrow, self.read_steps(narrow), strict=True))
        for run_id in wide:
            read[run_id] = self._window(run_id, width)
        return [read[r] for r in run_ids]

    def _window(self, run_id: str, width: int) -> dict[str, dict[str, str]]:
        keys = self.keys
        graph_json, join = self.scripts.read_pipelined(
            [("HGET", keys.run(run_id), "graph"), ("HGETALL", keys.join(run_id))]
        )
        counters = text_dict(join)
        window = self._watched(
            run_id, list(json.loads(as_text(graph_json) or "{}").get("succ", {}))
        )
        moved: list[Any] = []
        for name, count in counters.items():
            if not name.startswith("mapn:"):
                continue
            node = name.removeprefix("mapn:")
            low = end = int(counters.get(f"watchlow:{node}", 0))
            waiting = 0
            # A few windows at most a pass: the low moves on over the instances that ended.
            for _ in range(4):
                if waiting >= width or end >= int(count):
                    break
                found = self._watched(
                    run_id, [f"{node}-{i}" for i in range(end, min(int(count), end + width))]
                )
                for i in range(end, min(int(count), end + width)):
                    status = found.get(f"{node}-{i}", {}).get("status")
                    if status in _ENDED and i == low:
                        low += 1
                    elif status not in _ENDED:
                        waiting += 1
                end += width
                window.update(found)
            if low > int(counters.get(f"watchlow:{node}", 0)):
                moved += [node, low]
        if moved:
            self.scripts.call("move_watch_window", run_id, *moved)
        return window

    def _watched(self, run_id: str, steps: Sequence[str]) -> dict[str, dict[str, str]]:
        """What the watchdog reads of ``steps`` (status, job, recovered)."""
        return dict(zip(steps, self._step_fields(run_id, steps, _WATCHED_FIELDS), strict=True))

    def _step_fields(
        self, run_id: str, steps: Sequence[str], names: Sequence[str]
    ) -> list[dict[str, str]]:
        """Fields ``names`` of ``steps``: pipelined HMGETs of ``WATCH_READ`` fields at most,
        so that no call blocks Redis for long."""
        fields = [f"{step}.{name}" for step in steps for name in names]
        key = self.keys.steps(run_id)
        replies = self.scripts.read_pipelined(
            [("HMGET", key, *fields[n : n + WATCH_READ]) for n in range(0, len(fields), WATCH_READ)]
        )
        values = [value for reply in replies for value in reply]
        width = len(names)
        return [
            {
                name: as_text(value) or ""
                for name, value in zip(names, values[n * width : (n + 1) * width], strict=True)
                if value is not None
            }
            for n in range(len(steps))
        ]

    def read_hashes(self, keys: Sequence[str], chunk: int = 2_000) -> list[dict[str, str]]:
        """Hashes as text: each in one HGETALL (pipelined), or, over ``chunk`` fields (a
        wide map's steps), ``chunk`` fields per HSCAN call, so that no call blocks Redis for
        long (such a hash belongs to an ended run, or changes only by fields added)."""
        lengths = self.scripts.read_pipelined([("HLEN", key) for key in keys])
        small = [key for key, length in zip(keys, lengths, strict=True) if int(length) <= chunk]
        read = dict(
            zip(small, self.scripts.read_pipelined([("HGETALL", k) for k in small]), strict=True)
        )
        hashes = []
        for key in keys:
            if key in read:
                hashes.append(text_dict(read[key]))
            else:
                fields = {}
                for name, value in self.connection.hscan_iter(key, count=chunk):
                    fields[as_text(name) or ""] = as_text(value) or ""
                hashes.append(fields)
        return hashes

    def unsaved(self, limit: int = 500, older_than: float = 0.0) -> list[str]:
        """Ended runs not yet in SQL, oldest first (those ended over ``older_than`` s ago).

        A run's score is the time of the worker that ended it: with ``older_than`` 0 every run
        is taken, whatever the clocks of that worker and this machine say."""
        cutoff: float | str = time.time() - older_than if older_than > 0 else "+inf"
        ids = self.connection.zrangebyscore(
            self.keys.unsaved_runs, "-inf", cutoff, start=0, num=limit
        )
        return [as_text(i) or "" for i in ids]

    def unsaved_count(self) -> int:
        """How many ended runs wait to be written to SQL."""
        return int(self.connection.zcard(self.keys.unsaved_runs))

    def set_aside_run(self, run_id: str, reason: str) -> None:
        """The database refused run ``run_id``: take it out of the unsaved set, so it no longer
        holds up the runs behind it, and keep it (its keys too) with ``reason``."""
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.unsaved_runs, run_id)
            pipe.hset(self.keys.set_aside_runs, run_id, reason)
            pipe.execute()

    def set_aside(self) -> dict[str, str]:
        """The runs set aside: run id -> the database's reason."""
        reasons = self.connection.hgetall(self.keys.set_aside_runs)
        return {as_text(k) or "": as_text(v) or "" for k, v in reasons.items()}

    def restore_set_aside(self) -> list[str]:
        """Put the runs set aside back in the unsaved set, to be written again."""
        run_ids = list(self.set_aside())
        if run_ids:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.zadd(self.keys.unsaved_runs, dict.fromkeys(run_ids, time.time()))
                pipe.hdel(self.keys.set_aside_runs, *run_ids)
                pipe.execute()
        return run_ids

    def past_deadline(self, limit: int) -> list[tuple[str, str]]:
        """Live runs whose deadline has passed by this machine's clock, the earliest first, at
        most ``limit``: each with its deadline in seconds (as submitted). One round trip."""
        (due,) = self.scripts.read_pipelined(
            [("ZRANGEBYSCORE", self.keys.deadlines, "-inf", time.time(), "LIMIT", 0, limit)]
        )
        run_ids = [as_text(i) or "" for i in due]
        if not run_ids:
            return []
        replies = self.scripts.read_pipelined(
            [("HGET", self.keys.run(run_id), "deadline") for run_id in run_ids]
        )
        return [(r, as_text(d) or "?") for r, d in zip(run_ids, replies, strict=True)]

    def live(self, older_than: float = 0.0, limit: int | None = None) -> list[str]:
        """Runs in flight, oldest first (those started over ``older_than`` s ago)."""
        cutoff: float | str = time.time() - older_than if older_than > 0 else "+inf"
        ids = self.connection.zrangebyscore(
            self.keys.live_runs, "-inf", cutoff, start=0 if limit else None, num=limit
        )
        return [as_text(i) or "" for i in ids]
