"""The companion thread of a stock RQ worker's process running ezgraph steps.

Stock workers only call the step function, so ezgraph's own background duties there live in
one daemon thread per process:

- **heartbeat**: it refreshes ``<prefix>:beat:<job>`` every second for a step that has run
  for :data:`BEAT_AFTER` seconds, so the watchdog tells a dead worker (no heartbeat: the step
  is requeued) from a long step. The watchdog leaves a step alone for its first two seconds,
  so a shorter step never needs a beat. A step pays no extra Redis round trip for it.
- **hand-over to SQL**: runs that ended in this process are written in batches (many runs per
  transaction) every 0.2 s, or as soon as the worker has run no step for 20 ms (it is idle),
  and once more when the process exits normally (``rq worker --burst`` ending). A forked
  work-horse leaves with ``os._exit`` right after its job, so there the step writes its run at
  once instead (see ``ezgraph.step.run_step``). A run whose process was killed before writing
  it waits in Redis for any ezgraph worker or ``ezgraph persist``.

  While ``ezgraph persist --follow`` runs (:mod:`ezgraph.handover`; it keeps
  :func:`writer_key` fresh), the thread leaves the writing to it: one process writing every
  worker's ended runs, in bigger batches and outside the workers, costs less CPU per step
  (README, Benchmarks).

The thread looks every :data:`TICK` while runs wait to be written, else every
:data:`SLOW_TICK`: a step that ends a run wakes it, so a busy worker's process is not
interrupted 50 times a second for nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from ..context import Runtime

logger = logging.getLogger(__name__)

BEAT_EVERY = 1.0  # seconds between step heartbeats...
BEAT_AFTER = 0.5  # ...once a step has run this long (the watchdog's grace is 2 s)
BEAT_TTL = 5  # seconds a heartbeat lasts: the watchdog acts on a started step without one
FLUSH_EVERY = 0.2  # seconds between batched writes of ended runs...
IDLE_FLUSH = 0.02  # ...or sooner, once no step has run for this long
TICK = 0.02  # seconds between the thread's looks while ended runs wait to be written...
SLOW_TICK = 0.25  # ...and otherwise
WRITER_RENEW_EVERY = 1.0  # seconds between a follower's renewals of its announcement...
WRITER_TTL = 3.0  # ...which lasts this long
WRITER_LOOK_EVERY = 1.0  # seconds a look at the announcement is trusted


def writer_key(prefix: str) -> str:
    """The key a running ``ezgraph persist --follow`` keeps fresh."""
    return f"{prefix}:writer"


class Companion(threading.Thread):
    """Heartbeat of the running step, and batched writes of ended runs (see module doc)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="ezgraph-companion", daemon=True)
        self.runtime = runtime
        self._step: tuple[str, float] | None = None  # the running step's beat key, its start
        self._last_step = 0.0  # when the last step ended (monotonic)
        self._first_ended = 0.0  # when the oldest run waiting to be written ended
        self._ended: list[str] = []
        self._lock = threading.Lock()
        self._writer_seen = (-WRITER_LOOK_EVERY, False)  # (when looked, a follower writes)
        self._wake = threading.Event()

    @contextmanager
    def running(self, job_id: str) -> Iterator[None]:
        """Beat for ``job_id`` while the block runs."""
        self._step = (f"{self.runtime.settings.key_prefix}:beat:{job_id}", time.monotonic())
        try:
            yield
        finally:
            self._step = None
            self._last_step = time.monotonic()

    def save_later(self, run_id: str) -> None:
        """Write the ended run ``run_id`` to SQL in the next batch, unless a follower was seen
        writing within the last look's lifetime (the run waits in Redis's unsaved set for it)."""
        if self._last_look() is True:
            return
        with self._lock:
            first = not self._ended
            if first:
                self._first_ended = time.monotonic()
            self._ended.append(run_id)
        if first:
            self._wake.set()

    def flush(self) -> None:
        """Write the ended runs collected so far, unless a follower writes them."""
        with self._lock:
            ended, self._ended = self._ended, []
        if ended and not self.follower_writes():
            self.runtime.save_runs(ended)

    def follower_writes(self) -> bool:
        """Whether an ``ezgraph persist --follow`` is writing ended runs (looked up at most
        once every :data:`WRITER_LOOK_EVERY` seconds)."""
        present = self._last_look()
        if present is None:
            key = writer_key(self.runtime.settings.key_prefix)
            present = bool(self.runtime.connection.exists(key))
            self._writer_seen = (time.monotonic(), present)
        return present

    def _last_look(self) -> bool | None:
        """What the last look at the announcement saw, or None when it is too old to trust."""
        looked, present = self._writer_seen
        return present if time.monotonic() - looked < WRITER_LOOK_EVERY else None

    def run(self) -> None:
        """Beat and flush until the process ends; a failing pass is logged, never fatal."""
        beaten, last_beat = "", 0.0
        while True:
            self._wake.wait(TICK if self._ended else SLOW_TICK)
            self._wake.clear()
            try:
                step = self._step
                now = time.monotonic()
                if step is not None and now - step[1] >= BEAT_AFTER:
                    key = step[0]
                    if key != beaten or now - last_beat >= BEAT_EVERY:
                        beaten, last_beat = key, now
                        self.runtime.connection.set(key, 1, ex=BEAT_TTL)
                idle = step is None and now - self._last_step >= IDLE_FLUSH
                if self._ended and (idle or now - self._first_ended >= FLUSH_EVERY):
                    self.flush()
            except (RedisError, OSError) as error:
                logger.warning("companion pass failed: %s", error)


_companion: Companion | None = None
_companion_lock = threading.Lock()


def companion_for(runtime: Runtime) -> Companion:
    """This process's companion, started on first use."""
    global _companion
    with _companion_lock:
        if _companion is None or not _companion.is_alive():  # first step, or after a fork
            _companion = Companion(runtime)
            _companion.start()
            atexit.register(_companion.flush)
        return _companion
