"""Plain-RQ task and worker runner for the hand-chained baseline.

One RQ queue per graph node (:func:`queue_name`). :func:`step` is the only task: it does no work,
then enqueues its successors itself with ``Queue(next).enqueue(step, ...)``, the way the seed
chained modules. A join node (several predecessors) is enqueued by whichever predecessor's
atomic ``INCR`` on a per-run counter reaches the number of predecessors.

:func:`worker_main` is what each worker subprocess runs: it builds an RQ ``SimpleWorker``
(imports and connection done), announces itself on ``bench:ready``, blocks on ``bench:go`` and
only then enters ``work()`` (not burst mode: a burst worker quits as soon as the queues are
momentarily empty, which happens while the other worker is still producing successors).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from redis import Redis
from rq import Queue, SimpleWorker, get_current_job

from .harness import (
    GO_KEY,
    GRAPHS,
    READY_KEY,
    connect,
    mark_end,
    mark_start,
    predecessors,
    sources,
)

QUEUE_PREFIX = "bench_"

_PREDECESSORS = {name: predecessors(graph) for name, graph in GRAPHS.items()}
_SOURCES = {name: set(sources(graph)) for name, graph in GRAPHS.items()}


def queue_name(node: str) -> str:
    """The RQ queue a node's steps go through."""
    return QUEUE_PREFIX + node


def fanin_key(run: int, node: str) -> str:
    """Per-run arrival counter of a join node."""
    return f"bench:fanin:{run}:{node}"


def step(graph: str, node: str, run: int) -> None:
    """A trivial step that chains its successors by hand."""
    job = get_current_job()
    assert job is not None, "step() must run inside an RQ worker"
    conn: Redis = job.connection
    if node in _SOURCES[graph]:
        mark_start(conn)
    successors = GRAPHS[graph][node]
    if not successors:
        mark_end(conn, run)
        return
    preds = _PREDECESSORS[graph]
    for nxt in successors:
        needed = len(preds[nxt])
        if needed > 1 and int(conn.incr(fanin_key(run, nxt))) != needed:
            continue  # not the last arrival: the last predecessor enqueues the join
        Queue(queue_name(nxt), connection=conn).enqueue(step, graph, nxt, run)


def enqueue_run(conn: Redis, graph: str, run: int) -> None:
    """Submit one run: enqueue its source step(s)."""
    for node in sources(GRAPHS[graph]):
        Queue(queue_name(node), connection=conn).enqueue(step, graph, node, run)


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker subprocess: ``SimpleWorker`` behind a ready/go barrier."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--go-timeout", type=float, default=120.0)
    parser.add_argument("queues", nargs="+")
    args = parser.parse_args(argv)
    conn = connect(args.url)
    worker = SimpleWorker([Queue(q, connection=conn) for q in args.queues], connection=conn)
    conn.incr(READY_KEY)
    if conn.blpop([GO_KEY], timeout=args.go_timeout) is None:
        raise SystemExit("no go signal")
    worker.work(burst=False, logging_level=args.log_level, with_scheduler=False)
