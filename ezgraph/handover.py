"""``ezgraph persist --follow``: one process writing every worker's ended runs to SQL.

Beside stock ``rq worker`` processes it takes the hand-over to SQL out of them: while it runs
(it renews :func:`~ezgraph.workers.stock.writer_key` every second) their companion threads leave
the runs they end in Redis's unsaved set, and it writes them in batches, as ezgraph's own
workers do: at once when nothing more has ended since its last look (20 ms), else every 0.2 s
or 100 runs, under the same short write lock (:func:`~ezgraph.workers.fast.save_ended`). Each
write takes the runs waiting when it starts; those that end meanwhile go in the next one.

On a clean stop it withdraws its announcement, waits out the workers' last look at it, and
writes what is left. Runs it did not get to (it was killed) wait in Redis for the next
follower, any ``ezgraph worker``, or ``ezgraph persist``.
"""

from __future__ import annotations

import logging
import threading
import time

from redis.exceptions import RedisError

from .context import Runtime
from .workers.fast import SAVE_BATCH, SAVE_EVERY, save_ended
from .workers.stock import TICK, WRITER_LOOK_EVERY, WRITER_RENEW_EVERY, WRITER_TTL, writer_key

logger = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before writing again when a write left every run waiting


def follow(runtime: Runtime, stopped: threading.Event, name: str) -> None:
    """Write ended runs to SQL as they end, in batches, until ``stopped`` is set."""
    connection = runtime.connection
    book = runtime.book
    key = writer_key(runtime.settings.key_prefix)
    announced = 0.0
    waiting_since: float | None = None  # when runs were first seen waiting
    seen = 0  # runs waiting at the last look
    try:
        while not stopped.is_set():
            try:
                now = time.monotonic()
                if now - announced >= WRITER_RENEW_EVERY:
                    connection.set(key, name, px=int(WRITER_TTL * 1000))
                    announced = now
                waiting = book.unsaved_count()
                if not waiting:
                    waiting_since = None
                else:
                    waiting_since = waiting_since if waiting_since is not None else now
                    quiet = waiting == seen  # nothing ended since the last look
                    if quiet or waiting >= SAVE_BATCH or now - waiting_since >= SAVE_EVERY:
                        oldest = book.unsaved(limit=1)
                        save_ended(runtime, name, until_empty=False)
                        waiting_since = None
                        if book.unsaved(limit=1) == oldest:
                            # Nothing was written: the database is down (logged), or another
                            # process is writing. Look again later.
                            stopped.wait(RETRY_AFTER)
                seen = waiting
            except (RedisError, OSError) as error:
                logger.warning("persist --follow: Redis failed, trying again: %s", error)
                stopped.wait(RETRY_AFTER)
            stopped.wait(TICK)
    finally:
        if connection.get(key) == name.encode():
            connection.delete(key)
        time.sleep(WRITER_LOOK_EVERY)  # workers that just looked leave runs to us a moment more
        save_ended(runtime, name, final=True)
