"""Tracing (the ``tracing`` extra): one OpenTelemetry trace per run, a span per step, linked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from redis import Redis

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import UsageError
from ezgraph.workers.fast import serve

from ..conftest import ROOT, simple_worker_burst

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans ended during the test, as the process's tracer provider exports them."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's provider is set only once
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def linked(span: ReadableSpan) -> set[int]:
    return {link.context.span_id for link in span.links}


def test_a_runs_steps_on_two_workers_make_one_trace_linked_by_predecessors(
    make_context: Callable[..., Context], spans: InMemorySpanExporter
) -> None:
    package = "tests.graphs.diamond"  # a -> (b, c) -> d
    client = make_context(package, tracing="on")
    run_id = GraphOrchestrator(context=client).submit("a", {"trail": []})
    serve(make_context(package, tracing="on"), ["a"], burst=True, with_scheduler=False)
    serve(make_context(package, tracing="on"), ["b", "c", "d"], burst=True, with_scheduler=False)

    found = by_name(spans)
    assert sorted(found) == ["process a", "process b", "process c", "process d", "send a"]
    root = found["send a"]
    assert root.kind is SpanKind.PRODUCER and root.parent is None
    assert {span.context.trace_id for span in found.values()} == {root.context.trace_id}
    for node in "abcd":
        span = found[f"process {node}"]
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "rq"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.destination.name"] == node
        assert span.attributes["messaging.message.id"] == f"{run_id}-{node}"
        assert span.attributes["messaging.message.conversation_id"] == run_id
        assert span.attributes["ezgraph.attempt"] == 1
    span_id = {node: found[f"process {node}"].context.span_id for node in "abcd"}
    assert linked(found["process a"]) == set()
    assert linked(found["process b"]) == linked(found["process c"]) == {span_id["a"]}
    assert linked(found["process d"]) == {span_id["b"], span_id["c"]}  # the join: both


def test_a_failing_step_records_its_error_on_its_span(
    make_context: Callable[..., Context], spans: InMemorySpanExporter
) -> None:
    context = make_context("tests.graphs.failing", tracing="on")
    GraphOrchestrator(context=context).submit("a", {"trail": []})
    serve(context, burst=True, with_scheduler=False, log_level="ERROR")

    failed = by_name(spans)["process c"]
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "ValueError"


def test_a_maps_successor_links_to_each_instance(
    make_context: Callable[..., Context], spans: InMemorySpanExporter
) -> None:
    context = make_context("tests.graphs.mapped", tracing="on")
    GraphOrchestrator(context=context).submit("m", {"items": [1, 2, 3]})
    serve(context, burst=True, with_scheduler=False)

    finished = spans.get_finished_spans()
    squares = {s.context.span_id for s in finished if s.name == "process square"}
    [collect] = [s for s in finished if s.name == "process collect"]
    assert len(squares) == 3 and linked(collect) == squares
    assert len({s.context.trace_id for s in finished}) == 1  # the instances in the run's trace


def test_a_stock_rq_worker_joins_the_runs_trace(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
) -> None:
    context = make_context("tests.graphs.chain", tracing="on")
    GraphOrchestrator(context=context).submit("a", {"trail": []})
    monkeypatch.setenv("EZGRAPH_TRACING", "on")  # the stock worker reads its environment
    simple_worker_burst(context, redis_conn, monkeypatch, ["a", "b"])

    found = by_name(spans)
    assert {span.context.trace_id for span in found.values()} == {found["send a"].context.trace_id}
    assert linked(found["process b"]) == {found["process a"].context.span_id}


def test_without_tracing_no_span_is_made_and_jobs_carry_no_context(
    make_context: Callable[..., Context], redis_conn: Redis, spans: InMemorySpanExporter
) -> None:
    context = make_context("tests.graphs.chain")
    assert context.tracing is None
    run_id = GraphOrchestrator(context=context).submit("a", {"trail": []})
    assert b"trace" not in (redis_conn.hget(f"rq:job:{run_id}-a", "data") or b"")
    serve(context, burst=True, with_scheduler=False)
    assert spans.get_finished_spans() == ()


def test_ezgraph_leaves_its_tracing_module_unimported_when_tracing_is_off() -> None:
    # (redis-py 8 imports OpenTelemetry itself when it is installed: not ezgraph's doing.)
    code = (
        "import sys, ezgraph, ezgraph.step, ezgraph.workers.fast, ezgraph.cli;"
        "print('ezgraph.tracing' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_tracing_without_the_extra_is_a_one_line_usage_error(
    make_context: Callable[..., Context], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ezgraph.tracing", None)  # as if OpenTelemetry were absent
    with pytest.raises(UsageError, match=r"needs OpenTelemetry .*pip install 'ezgraph\[tracing\]'"):
        make_context("tests.graphs.chain", tracing="on")
