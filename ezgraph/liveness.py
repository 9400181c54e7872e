"""Liveness: a process running steps keeps its worker's ``alive:<worker>`` key fresh.

One mechanism for every worker: ezgraph's worker beats for as long as it runs (its key speaks
for every job it claimed); a stock RQ worker's process beats while one of its steps has run
for ``beat_after`` seconds (a shorter step needs none: recovery waits longer than that before it
takes a step for lost). The beat has a thread of its own, so that a slow SQL write elsewhere in
the process never lets a live worker look dead (and its steps run twice).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from .settings import Tuning
from .state.keys import Keys

logger = logging.getLogger(__name__)

BeatExtra = Callable[[Any], None]  # adds to a beat's pipeline (an ezgraph worker's own fields)


class Heartbeat(threading.Thread):
    """Beats for ``beating()`` (the worker to beat for now, or None) until :meth:`stop`."""

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        tuning: Tuning,
        beating: Callable[[], str | None],
        tick: float,
        extra: BeatExtra | None = None,
        after_beat: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="ezgraph-heartbeat", daemon=True)
        self.connection = connection
        self.keys = keys
        self.tuning = tuning
        self.beating = beating
        self.tick = tick
        self.extra = extra
        self.after_beat = after_beat  # runs after each beat, in this thread
        self.stopped = threading.Event()
        self._last: tuple[str, float] | None = None  # the worker beaten for, and when

    def run(self) -> None:
        """Beat every ``beat_every`` seconds while ``beating()`` names a worker."""
        while not self.stopped.wait(self.tick):
            try:
                self.beat_if_due()
            except RedisError as error:
                logger.warning("heartbeat: Redis failed, trying again: %s", error)
            except Exception:
                logger.exception("heartbeat failed")

    def beat_if_due(self) -> None:
        """Beat now, unless this worker was beaten for less than ``beat_every`` ago."""
        name = self.beating()
        if name is None:
            return
        last = self._last
        if (
            last is not None
            and last[0] == name
            and time.monotonic() - last[1] < self.tuning.beat_every
        ):
            return
        try:
            self.beat(name)
        finally:  # even when the beat failed: a stop's grace is enforced with Redis gone too
            if self.after_beat is not None:
                self.after_beat()

    @property
    def has_beaten(self) -> bool:
        """Whether this heartbeat beat yet."""
        return self._last is not None

    def beat(self, name: str) -> None:
        """Say worker ``name`` is alive (and what ``extra`` adds), in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.set(self.keys.alive(name), os.getpid(), ex=self.tuning.beat_ttl)
        if self.extra is not None:
            self.extra(pipe)
        pipe.execute()
        self._last = (name, time.monotonic())

    def stop(self) -> None:
        """End the thread and wait for it."""
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5)


def alive(connection: Redis, keys: Keys, workers: list[str]) -> dict[str, bool]:
    """Which of ``workers`` beat recently, in one round trip."""
    if not workers:
        return {}
    pipe = connection.pipeline(transaction=False)
    for name in workers:
        pipe.exists(keys.alive(name))
    return {name: bool(found) for name, found in zip(workers, pipe.execute(), strict=True)}
