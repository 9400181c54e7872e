"""The names of ezgraph's own Redis keys, all under one prefix (``EZGRAPH_KEY_PREFIX``).

The Lua scripts build the same names (``lua/lib/prelude.lua``); a test checks they agree.
RQ's keys are named by :mod:`ezgraph.rq_compat` (and ``lua/lib/rq.lua``).

- ``run:<id>`` hash: status, start, package, graph (JSON), input, created_at, ended_at,
  pending (steps created and not yet ended), error.
- ``run:<id>:steps`` hash: ``<step>.<field>`` for status, job, output, error, started_at,
  ended_at, worker, attempts, input (failed steps), map (item count of a mapped node),
  recovered (times recovery requeued it), stopped_while_running (it finished after its run
  stopped, so it created no successors: a retry runs it again).
- ``run:<id>:state`` hash: the state a step passed on, kept where a join or the result reads it.
- ``run:<id>:join`` hash: join arrivals (``left:<node>``, ``any:<node>``), map counters, and a
  stopped run's sweep of its jobs (``sweep:cursor``, ``sweep:mode``; ``runs:sweeping`` sorted
  set: the runs being swept, scored by their last progress).
- ``run:<id>:jobs`` hash: RQ job id -> queue, for every step job of the run.
- ``run:<id>:events`` stream: what the run's steps emitted (progress, events), capped; it
  expires with the run's other keys.
- ``run:<id>:signals`` hash: the run's mailbox: ``signal:<name>`` -> the data sent (JSON),
  ``waiter:<name>`` -> the step waiting for it; it expires with the run's other keys.
- ``runs:waiting`` sorted set: ``<run id> <step>`` of waiting steps, scored by when the
  watchdog looks at them: the wait's deadline, or soon after its signal came.
- ``idem:<key>``: the run id of idempotency key ``<key>`` (or ``claim <run id>`` for a moment
  while a submitter looks the key up in SQL); it expires with the run's keys.
- ``run:<id>:map:<token>`` hash: a Map's instances staged, until they are created (a chunk per
  call; ``maps:creating`` sorted set: the maps under way, scored by their last progress).
- ``run:<id>:stopped`` channel: a message when the run stops (failed, canceled) or ends.
- ``runs:live`` / ``runs:unsaved`` sorted sets: runs in flight / ended and not yet in SQL.
- ``runs:deadlines`` sorted set: live runs with a deadline, scored by it (epoch seconds, by
  the submitter's clock); a run leaves it when it ends or is stopped.
- ``runs:expiring`` sorted set: runs in SQL whose RQ jobs are still being set to expire,
  scored by the HSCAN cursor of their ``jobs`` hash.
- ``alive:<worker>``: a worker running steps is alive while this lives (its heartbeat).
- ``workers`` set and ``claimed:<worker>`` lists: ezgraph workers and the jobs each claimed.
- ``idle:<queue>`` / ``wake:<queue>``: an idle ezgraph worker's mark and its wake-up list.
- ``suspect:<job>:<execution>``: since when the watchdog has seen a step look lost.
- ``lock:watch``, ``lock:write``, ``follower``: one watchdog pass and one SQL writer at a
  time; a running ``persist --follow`` announces itself.
- ``schedules`` hash: schedule name -> its definition (JSON); ``schedules:fired`` hash: name
  -> its last tick and run; ``schedule:<name>:<tick>``: that tick fired (a scheduler's claim).
- ``trace:<run_id>`` hash: step -> its span's ``traceparent``, where a join reads its
  predecessors' (only with tracing on: :mod:`ezgraph.tracing`; it expires on its own).
- ``crashed:<point>:<step>``, ``chaos:<audit>``: fault injection and the crash audit's ledger.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """ezgraph's key names under ``prefix``."""

    prefix: str = "ezgraph"

    def run(self, run_id: str) -> str:
        """A run's header."""
        return f"{self.prefix}:run:{run_id}"

    def steps(self, run_id: str) -> str:
        """A run's steps (``<step>.<field>``)."""
        return f"{self.prefix}:run:{run_id}:steps"

    def state(self, run_id: str) -> str:
        """The states a run's steps passed on, where something reads them."""
        return f"{self.prefix}:run:{run_id}:state"

    def join(self, run_id: str) -> str:
        """A run's join arrivals and map counters."""
        return f"{self.prefix}:run:{run_id}:join"

    def jobs(self, run_id: str) -> str:
        """A run's RQ job ids and their queues."""
        return f"{self.prefix}:run:{run_id}:jobs"

    def events(self, run_id: str) -> str:
        """The stream of what a run's steps emitted (progress and events)."""
        return f"{self.prefix}:run:{run_id}:events"

    def signals(self, run_id: str) -> str:
        """A run's mailbox: the signals sent to it, and which step waits for each name."""
        return f"{self.prefix}:run:{run_id}:signals"

    def stopped(self, run_id: str) -> str:
        """The channel a message is published on when the run stops or ends."""
        return f"{self.prefix}:run:{run_id}:stopped"

    def trace(self, run_id: str) -> str:
        """The span contexts a run's steps left for the joins after them (tracing only)."""
        return f"{self.prefix}:trace:{run_id}"

    def idempotency(self, key: str) -> str:
        """The run id of a submission's idempotency key."""
        return f"{self.prefix}:idem:{key}"

    def map_items(self, run_id: str, token: str) -> str:
        """A Map's instances, staged until they are created."""
        return f"{self.prefix}:run:{run_id}:map:{token}"

    @property
    def maps_creating(self) -> str:
        """The maps whose instances are being created, ``<run>/<node>`` scored by their last
        progress."""
        return f"{self.prefix}:maps:creating"

    @property
    def runs_sweeping(self) -> str:
        """The stopped runs whose jobs are being swept a chunk per call (canceled, or marked
        stopped while running), scored by their last progress."""
        return f"{self.prefix}:runs:sweeping"

    def run_keys(self, run_id: str) -> tuple[str, ...]:
        """Every key one run holds."""
        return (
            self.run(run_id),
            self.steps(run_id),
            self.state(run_id),
            self.join(run_id),
            self.jobs(run_id),
            self.events(run_id),
            self.signals(run_id),
        )

    @property
    def live_runs(self) -> str:
        """Runs in flight, scored by their start."""
        return f"{self.prefix}:runs:live"

    @property
    def waiting_steps(self) -> str:
        """Waiting steps (``<run id> <step>``), scored by when the watchdog looks at them."""
        return f"{self.prefix}:runs:waiting"

    @property
    def unsaved_runs(self) -> str:
        """Ended runs not yet in SQL, scored by their end."""
        return f"{self.prefix}:runs:unsaved"

    @property
    def set_aside_runs(self) -> str:
        """Ended runs the database refused: run id -> the reason (``ezgraph persist`` retries)."""
        return f"{self.prefix}:runs:set_aside"

    @property
    def database_down(self) -> str:
        """Set while a writer finds the database down, for as long as it waits to try again."""
        return f"{self.prefix}:database_down"

    @property
    def deadlines(self) -> str:
        """Live runs with a deadline, scored by it (the watchdog fails those past it)."""
        return f"{self.prefix}:runs:deadlines"

    @property
    def expiring_runs(self) -> str:
        """Runs in SQL whose RQ jobs are being set to expire, a chunk per call."""
        return f"{self.prefix}:runs:expiring"

    def alive(self, worker: str) -> str:
        """A worker's heartbeat."""
        return f"{self.prefix}:alive:{worker}"

    @property
    def workers(self) -> str:
        """The ezgraph workers that may hold claimed jobs."""
        return f"{self.prefix}:workers"

    def claimed(self, worker: str) -> str:
        """The jobs an ezgraph worker claimed and has not finished."""
        return f"{self.prefix}:claimed:{worker}"

    def idle(self, queue: str) -> str:
        """Set while an ezgraph worker waits for jobs of ``queue``."""
        return f"{self.prefix}:idle:{queue}"

    def wake(self, queue: str) -> str:
        """The list idle ezgraph workers of ``queue`` block on."""
        return f"{self.prefix}:wake:{queue}"

    def suspect(self, job_id: str, execution: str) -> str:
        """Since when (its remaining TTL) one execution of a job has looked lost."""
        return f"{self.prefix}:suspect:{job_id}:{execution}"

    @property
    def watch_lock(self) -> str:
        """Held by the worker making this second's watchdog pass."""
        return f"{self.prefix}:lock:watch"

    @property
    def write_lock(self) -> str:
        """Held by the process writing ended runs to SQL."""
        return f"{self.prefix}:lock:write"

    @property
    def follower(self) -> str:
        """Set while an ``ezgraph persist --follow`` writes every ended run."""
        return f"{self.prefix}:follower"

    @property
    def schedules(self) -> str:
        """The schedules: name -> definition (JSON)."""
        return f"{self.prefix}:schedules"

    @property
    def schedules_fired(self) -> str:
        """Each schedule's last fired tick and run: name -> ``<tick> <run_id>``."""
        return f"{self.prefix}:schedules:fired"

    def schedule_tick(self, name: str, tick: int) -> str:
        """Set once schedule ``name`` fired for ``tick`` (epoch seconds): no second run."""
        return f"{self.prefix}:schedule:{name}:{tick}"

    def chaos_ledger(self, audit: str) -> str:
        """Where one ``ezgraph chaos`` audit counts executions and side effects (its steps add
        ``:executions``, ``:effects`` and ``:done:<step>``)."""
        return f"{self.prefix}:chaos:{audit}"

    def crashed(self, point: str, step: str) -> str:
        """Set once a fault-injection crash point has fired (tests and audits)."""
        return f"{self.prefix}:crashed:{point}:{step}"
