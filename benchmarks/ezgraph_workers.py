"""Worker processes of the ezgraph systems, behind the harness's ready/go barrier.

``fast``: ezgraph's own :class:`~ezgraph.workers.fast.FastWorker` (what ``ezgraph worker`` runs).
``stock``: RQ's stock ``SimpleWorker`` running ezgraph steps (what ``rq worker -w
rq.worker.SimpleWorker`` runs). Settings come from the environment (REDIS_URL, DATABASE_URL,
EZGRAPH_MODULES), as for any worker.
"""

from __future__ import annotations

import sys
import time

from rq import Queue, SimpleWorker

from ezgraph.context import Context
from ezgraph.settings import Settings
from ezgraph.workers.fast import FastWorker

from .harness import GO_KEY, READY_KEY


def main(kind: str) -> None:
    """Build the worker, say ready, wait for go, work until terminated."""
    context = Context(Settings.from_env())
    # Sink first, as plain RQ's workers listen (and as ezgraph worker does by default).
    queues = [Queue(node, connection=context.connection) for node in context.graph().sink_first()]
    worker: SimpleWorker
    if kind == "fast":
        worker = FastWorker(queues, connection=context.connection, context=context)
    else:
        worker = SimpleWorker(queues, connection=context.connection)
    context.connection.incr(READY_KEY)
    # Short waits: the connection's socket timeout (Tuning.redis_timeout) ends a long BLPOP,
    # and submitting a 100,000-run backlog takes longer than that.
    deadline = time.monotonic() + 120
    while context.connection.blpop([GO_KEY], timeout=1) is None:
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
    worker.work(burst=False, logging_level="WARNING", with_scheduler=False)


if __name__ == "__main__":
    main(sys.argv[1])
