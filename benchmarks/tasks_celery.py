"""Celery app and task for the Celery baseline (imported only when ``celery`` is installed).

Broker and result backend are the benchmark Redis db. Defaults are kept (JSON, results stored,
prefetch multiplier 4, early ack) except for start-up noise. One queue per graph node
(:func:`queue_name`), like the RQ baseline. A run is one canvas built by :func:`build_canvas`:
a ``chain`` of immutable signatures, with a ``chord`` (group of the parallel layer, then the
join as body) wherever the graph fans out and back in.

Run a worker with::

    celery -A benchmarks.tasks_celery worker -c 2 -P prefork --without-gossip \
        --without-mingle --without-heartbeat -Q bench_a,bench_b
"""

from __future__ import annotations

import gc
import os
from typing import Any

from celery import Celery, chain, chord, group  # type: ignore[import-untyped]
from celery.canvas import Signature  # type: ignore[import-untyped]
from celery.signals import worker_ready  # type: ignore[import-untyped]
from kombu import Exchange, Queue  # type: ignore[attr-defined]
from redis import Redis

from .harness import GRAPHS, READY_KEY, connect, mark_end, mark_start, redis_url, sinks, sources
from .harness import topological_layers as _layers

QUEUE_PREFIX = "bench_"

app = Celery("benchmarks", broker=redis_url(), backend=redis_url())
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_SOURCES = {name: set(sources(graph)) for name, graph in GRAPHS.items()}
_SINKS = {name: set(sinks(graph)) for name, graph in GRAPHS.items()}
_conn: tuple[int, Redis] | None = None


def _redis() -> Redis:
    """One instrumentation client per process (the prefork children are forked)."""
    global _conn
    if _conn is None or _conn[0] != os.getpid():
        _conn = (os.getpid(), connect())
    return _conn[1]


def queue_name(node: str) -> str:
    """The Celery queue a node's steps go through."""
    return QUEUE_PREFIX + node


@app.task(name="bench.step")  # type: ignore[untyped-decorator]
def step(graph: str, node: str, run: int) -> None:
    """A trivial step; the canvas, not the task, decides what runs next."""
    if node in _SOURCES[graph]:
        mark_start(_redis())
    if node in _SINKS[graph]:
        mark_end(_redis(), run)


def _sig(graph: str, node: str, run: int) -> Signature:
    return step.si(graph, node, run).set(queue=queue_name(node))


def build_canvas(graph: str, run: int) -> Signature:
    """The canvas for one run of ``graph``: chains, with chords for fan-out/fan-in layers."""
    g = GRAPHS[graph]
    layers = _layers(g)
    parts: list[Any] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if len(layer) == 1:
            parts.append(_sig(graph, layer[0], run))
            i += 1
            continue
        body = layers[i + 1] if i + 1 < len(layers) else []
        if len(body) != 1 or any(g[node] != body for node in layer):
            raise ValueError(f"{graph}: only chains and fan-out/fan-in layers are supported")
        header = group(_sig(graph, node, run) for node in layer)
        parts.append(chord(header, _sig(graph, body[0], run)))
        i += 2
    return parts[0] if len(parts) == 1 else chain(*parts)


def forget_pending_results() -> None:
    """Drop the client-side result subscriptions piled up by submitting runs.

    Every ``apply_async`` from a non-worker process SUBSCRIBEs to the sent task's result
    channel. A dropped chain result unsubscribes when garbage-collected, but a chord's header
    results stay registered (and subscribed) in the producer until someone waits on them: one
    SUBSCRIBE per header task that is never undone, with the results piling up unread on the
    client's pubsub connection. The harness calls this after each measurement (outside the
    window) so that leak does not carry over; it touches Celery internals, hence the guards.
    """
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    subscribed = getattr(consumer, "subscribed_to", None)
    if isinstance(subscribed, set):
        subscribed.clear()  # so the results' __del__ below sends no UNSUBSCRIBE
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.stop()  # closes the pubsub connection: the server drops the subscriptions
        consumer._pubsub = None  # the next consume_from() starts a fresh one
    for mapping in getattr(backend, "_pending_results", ()):
        mapping.clear()
    gc.collect()


def declare_queues(graph: str) -> None:
    """Recreate the kombu bindings of ``graph``'s queues, e.g. after a FLUSHDB.

    The client caches "already declared" per process and would not redo it after a FLUSHDB.
    kombu 5.7 still routes such messages to the queue of the same name, but the benchmark should
    not depend on that fallback. Not metered: a deployed system has its queues declared.
    """
    with app.connection_for_write() as conn:
        for node in GRAPHS[graph]:
            name = queue_name(node)
            queue = Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
            queue(conn.default_channel).declare()  # type: ignore[no-untyped-call]


def enqueue_run(graph: str, run: int) -> None:
    """Submit one run (the AsyncResult is dropped: fire and forget)."""
    build_canvas(graph, run).apply_async()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_ready(**_: Any) -> None:
    _redis().incr(READY_KEY)
