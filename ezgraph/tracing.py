"""OpenTelemetry tracing (the ``tracing`` extra, ``EZGRAPH_TRACING``): one trace per run.

Submitting a run makes its root span, ``send <start>`` (a producer span); each step is a
consumer span ``process <node>``, a child of that root, with the messaging semantic conventions'
attributes and a link to the span of each predecessor that made it ready. The trace context
rides in the step jobs: each job carries the run's root context (W3C ``traceparent``) and the
span of the step that created it, so the steps of one run join one trace on any worker. A join
links to every predecessor: a step whose successor is a join leaves its span context in
``<prefix>:trace:<run_id>`` (a hash that lives ``EZGRAPH_RUN_TTL`` after its last write), where
the join reads them as it starts. Spans a module makes while its step runs are children of the
step's span.

Only imported when tracing is on: without it, ezgraph neither imports OpenTelemetry nor does
anything per step (``Context.tracing`` is None).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from redis import Redis
from redis.exceptions import RedisError

from . import __version__
from .model.step_job import StepJob
from .settings import Settings
from .state.keys import Keys
from .state.protocol import as_text

logger = logging.getLogger(__name__)

PROPAGATOR = TraceContextTextMapPropagator()
MAX_LINKS = 128  # the SDK's default span link limit: a map's successor links to its first items
LINK = "link"  # the carrier's field naming the span of the step that created the job


class Tracing:
    """Makes the spans of runs and steps with the tracer of ``provider`` (default: the global
    one, which ``opentelemetry-instrument`` or the application sets)."""

    def __init__(
        self, connection: Redis, keys: Keys, ttl: int, provider: TracerProvider | None = None
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.ttl = ttl
        self.tracer: Tracer = trace.get_tracer("ezgraph", __version__, tracer_provider=provider)

    @classmethod
    def for_settings(cls, settings: Settings, connection: Redis, keys: Keys) -> Tracing:
        """Tracing as ``EZGRAPH_TRACING`` says (``console``: the SDK's provider, printing)."""
        provider = _console_provider() if settings.tracing == "console" else None
        return cls(connection, keys, settings.run_ttl, provider)

    def submitted(self, run_id: str, start: StepJob) -> dict[str, str]:
        """Make run ``run_id``'s root span; returns its context, for the first job to carry."""
        attributes = _messaging("send", start, run_id)
        with self.tracer.start_as_current_span(
            f"send {start.node}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            PROPAGATOR.inject(carrier)
        return carrier

    @contextmanager
    def step(
        self, job: StepJob, attempt: int, worker: str, predecessors: Sequence[str]
    ) -> Iterator[StepSpan]:
        """The span of one attempt at ``job``'s step (a node of ``predecessors``), current
        while it runs; an exception raised in it is recorded and marks it failed."""
        carrier = job.trace or {}
        parent = PROPAGATOR.extract(carrier)
        links = [carrier[LINK]] if carrier.get(LINK) else []
        if job.reads_join_input:
            links = self._predecessors(job.run_id, predecessors) or links
        attributes = {
            **_messaging("process", job, job.run_id),
            "messaging.client.id": worker,
            "ezgraph.step": job.step,
            "ezgraph.attempt": attempt,
        }
        with self.tracer.start_as_current_span(
            f"process {job.node}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(context) for context in map(_span_context, links[:MAX_LINKS]) if context],
            attributes=attributes,
        ) as span:
            yield StepSpan(self, job, span, {k: v for k, v in carrier.items() if k != LINK})

    def _predecessors(self, run_id: str, nodes: Sequence[str]) -> list[str]:
        """The span contexts a join's predecessors left (a mapped node's: each instance's)."""
        try:
            left = self.connection.hgetall(self.keys.trace(run_id))
        except RedisError as error:  # a trace is never worth a step: it loses its links
            logger.warning("run %s: predecessors' spans unread: %s", run_id, error)
            return []
        wanted = re.compile(f"(?:{'|'.join(map(re.escape, nodes))})(?:-\\d+)?")
        found = sorted((as_text(name) or "", as_text(value) or "") for name, value in left.items())
        return [value for name, value in found if wanted.fullmatch(name)]


class StepSpan:
    """A step's span, and what its successors' jobs carry of it."""

    def __init__(self, tracing: Tracing, job: StepJob, span: Span, run: dict[str, str]) -> None:
        self.tracing = tracing
        self.job = job
        self.span = span
        self.run = run  # the run's root context

    def hand_on(self, jobs: Sequence[StepJob]) -> tuple[StepJob, ...]:
        """``jobs`` carrying the run's context and a link to this span; when one is a join,
        this span's context is left where the join reads it."""
        mine: dict[str, str] = {}
        PROPAGATOR.inject(mine, trace.set_span_in_context(self.span))
        own = mine.get("traceparent", "")
        if any(job.reads_join_input for job in jobs):
            key = self.tracing.keys.trace(self.job.run_id)
            try:
                with self.tracing.connection.pipeline(transaction=False) as pipe:
                    pipe.hset(key, self.job.step, own)
                    pipe.expire(key, self.tracing.ttl)
                    pipe.execute()
            except RedisError as error:  # the join will not link to this step
                logger.warning(
                    "run %s step %s: span unsaved: %s", self.job.run_id, self.job.step, error
                )
        carried = {**self.run, LINK: own}
        return tuple(replace(job, trace=carried) for job in jobs)


def _messaging(operation: str, job: StepJob, run_id: str) -> dict[str, Any]:
    """The messaging semantic conventions' attributes of a step job sent or processed."""
    return {
        "messaging.system": "rq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": job.node,  # the node's queue
        "messaging.message.id": job.job_id,
        "messaging.message.conversation_id": run_id,
        "ezgraph.run_id": run_id,
        "ezgraph.node": job.node,
    }


def _span_context(traceparent: str) -> trace.SpanContext | None:
    """The span context a ``traceparent`` names (None when malformed)."""
    context = trace.get_current_span(PROPAGATOR.extract({"traceparent": traceparent}))
    span_context = context.get_span_context()
    return span_context if span_context.is_valid else None


@functools.cache
def _console_provider() -> TracerProvider:
    """The SDK's provider printing every span on stderr as it ends (one per process)."""
    # Imported here: `on` needs only the API (the process's own provider does the rest).
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = SdkTracerProvider(resource=Resource.create({"service.name": "ezgraph"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    return provider
