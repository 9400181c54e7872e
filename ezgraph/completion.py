"""The end of a step, for every worker: call its module, plan its completion, record it.

A stock RQ worker runs a step through :func:`ezgraph.step.run_step`, which records its
completion with one script call; ezgraph's own worker batches the same completion requests
into its next claim. Both record a failure with :func:`fail` and settle each recorded outcome
with :func:`settle`. In Redis, ``run.complete`` (``state/lua/lib/run.lua``) does the rest::

    StepRun.call():  join input -> module -> check_result -> flow.plan -> CompletionRequest
    recorded:        one Lua call (complete_step, or inside finish_and_claim)
    settle():        the run ended? hand it to the writer (SQL)
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rq.job import Job

from . import flow
from .context import Context
from .errors import StepError
from .events import event_sink
from .faults import crash_point
from .model.graph import Graph
from .model.module_api import StepContext, Wait, reset_current_step, set_current_step
from .model.payload import to_json, to_json_or_repr
from .model.step_job import StepJob
from .rq_compat import ClaimedJob, utcnow_iso
from .state.protocol import (
    Completion,
    CompletionRequest,
    Failure,
    JoinInput,
    JoinInputError,
    Outcome,
    WaitRecord,
    join_input_spec,
)

if TYPE_CHECKING:  # OpenTelemetry's part, imported only with tracing on (Context.tracing)
    from .tracing import StepSpan

logger = logging.getLogger(__name__)

RunEnded = Callable[[str], None]  # hands a run that ended to the SQL writer


@dataclass(frozen=True)
class Attempt:
    """Which try of a step this is, who runs it, and what its claim read for it."""

    number: int
    retries_left: int | None
    worker: str
    join_input: list[Any] | None = None  # a join's input, read as the job was claimed

    @property
    def final(self) -> bool:
        """True when RQ will not retry the step if this attempt fails."""
        return not self.retries_left

    @classmethod
    def of(cls, job: Job | ClaimedJob | None) -> Attempt:
        """The attempt an RQ job (or an ezgraph worker's claimed job) is on: 1 for the first
        try (RQ keeps only ``retries_left``; the job's meta keeps the maximum)."""
        if job is None:
            return cls(1, None, "")
        retries = job.meta.get("retries")
        number = int(retries) - int(job.retries_left or 0) + 1 if retries else 1
        join_input = job.join_input if isinstance(job, ClaimedJob) else None
        return cls(number, job.retries_left, job.worker_name or "", join_input)


class StepRun:
    """One attempt at one step: :meth:`call` runs its module and plans its completion."""

    def __init__(self, context: Context, job: StepJob, attempt: Attempt) -> None:
        self.context = context
        self.job = job
        self.attempt = attempt
        self.started_at = utcnow_iso()
        self.data: dict[str, Any] = {}

    def call(self) -> CompletionRequest:
        """Run the module and build what recording its success needs; raises what the module
        raised, or :class:`~ezgraph.errors.StepError` / ``PayloadError`` for a bad result.
        With tracing on, all of it is the step's span."""
        tracing = self.context.tracing
        if tracing is None:
            return self._call(self.context.graph_of(self.job), None)
        graph = self.context.graph_of(self.job)
        predecessors = graph.predecessors(self.job.node) if self.job.reads_join_input else ()
        attempt = self.attempt
        with tracing.step(self.job, attempt.number, attempt.worker, predecessors) as span:
            return self._call(graph, span)

    def _call(self, graph: Graph, span: StepSpan | None) -> CompletionRequest:
        context, job = self.context, self.job
        if job.node in graph.unavailable:
            raise StepError(self._not_here(job.node))
        state: dict[str, Any] = job.state or {}  # what the step passes on, with its output
        gathered: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        if job.reads_join_input:
            state, gathered, outputs = self._join_input(graph)
        elif job.reads_mapper_state:
            state = self._mapper_state(graph)
        self.data = data = {**state, **gathered}
        if job.index is not None:
            data[job.item_key] = job.item
        step_context = StepContext(
            job.run_id,
            job.node,
            job.index,
            self.attempt.number,
            context.settings.database_url,
            outputs,
            graph.successors(job.node),
            event_sink(context, job.run_id),
        )
        token = set_current_step(step_context)
        try:
            value = call_module(context.function(graph, job.node), data, job.node)
        finally:
            reset_current_step(token)
        result = flow.check_result(graph, job.node, job.index, value)
        output_json = to_json(
            result.output, f"step {job.step!r}: output", context.settings.max_payload_bytes
        )
        crash_point(context.connection, context.keys, "after_module", job.step)
        if result.wait is not None:
            signaled, signal = self._wait(result.wait, output_json, state)
            if not signaled:
                return CompletionRequest(
                    self._completion(result, output_json, ""), (), (), result.output, True
                )
            result = flow.StepResult({**result.output, result.wait.name: signal})
            output_json = to_json(
                result.output, f"step {job.step!r}: output", context.settings.max_payload_bytes
            )
        return self.request(graph, state, result, output_json, span)

    def request(
        self,
        graph: Graph,
        state: dict[str, Any],
        result: flow.StepResult,
        output_json: str,
        span: StepSpan | None,
    ) -> CompletionRequest:
        """What recording this step's success with ``result`` needs (``state``: what it
        received to pass on, without a join's gathered lists)."""
        job = self.job
        new_state = {**state, **result.output}
        plan = flow.plan(graph, job, result, new_state)
        unavailable = [planned.node for planned in plan.jobs if planned.node in graph.unavailable]
        if result.mapped is not None and result.mapped.node in graph.unavailable:
            unavailable.append(result.mapped.node)
        if unavailable:
            raise StepError(self._not_here(unavailable[0]) + ": the run cannot go on")
        context = self.context
        map_items = None
        if result.mapped is not None and result.mapped.items:
            # Staged in Redis first: the call recording this step creates the first chunk.
            mapped = result.mapped
            instances: Iterator[StepJob] = flow.map_instances(graph, job, mapped)
            if span is not None:  # the instances join the run's trace
                instances = iter(span.hand_on(tuple(instances)))
            map_items = context.jobs.map_items(
                graph, mapped.node, uuid.uuid4().hex, len(mapped.items), instances
            )
            tuning = context.tuning
            context.runs.stage_map(map_items, tuning.map_chunk, tuning.map_items_ttl)
        kept = to_json(new_state, f"step {job.step!r}: state") if plan.keeps_state else ""
        token = map_items.token if map_items else ""
        completion = self._completion(result, output_json, kept, token)
        successors = plan.jobs if span is None else span.hand_on(plan.jobs)
        jobs = tuple(context.jobs.build(graph, planned) for planned in successors)
        return CompletionRequest(completion, jobs, plan.walk, result.output, map_items=map_items)

    def _completion(
        self, result: flow.StepResult, output_json: str, state: str, map_token: str = ""
    ) -> Completion:
        job = self.job
        return Completion(
            run_id=job.run_id,
            step=job.step,
            node=job.node,
            item_index="" if job.index is None else str(job.index),
            output=output_json,
            state=state,
            chosen="" if result.chosen is None else to_json(list(result.chosen), "route"),
            mapped_node=result.mapped.node if result.mapped else "",
            mapped_count=len(result.mapped.items) if result.mapped else 0,
            map_token=map_token,
            started_at=self.started_at,
            worker=self.attempt.worker,
            attempt=self.attempt.number,
        )

    def _wait(self, wait: Wait, output_json: str, state: dict[str, Any]) -> tuple[bool, Any]:
        """Record this step waiting for signal ``wait.name`` (``state``: what it passes on
        once resumed); returns (True, the signal's data) when it came first (the step then
        completes at once), else (False, None)."""
        job = self.job
        kwargs = {k: v for k, v in job.kwargs().items() if k != "state"}
        resume = to_json({"job": kwargs, "data": state}, f"step {job.step!r}: input")
        record = WaitRecord(
            run_id=job.run_id,
            step=job.step,
            name=wait.name,
            timeout="" if wait.timeout is None else repr(float(wait.timeout)),
            output=output_json,
            resume=resume,
            started_at=self.started_at,
            worker=self.attempt.worker,
            attempt=self.attempt.number,
        )
        status, detail = self.context.runs.wait_step(record)
        crash_point(self.context.connection, self.context.keys, "after_wait", job.step)
        if status == "taken":
            raise StepError(
                f"node {job.node!r}: step {detail!r} of this run already waits for {wait.name!r}"
            )
        if status == "signaled":
            return True, json.loads(detail)
        logger.info("run %s step %s waits for signal %r", job.run_id, job.step, wait.name)
        return False, None

    def _join_input(self, graph: Graph) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """A join's input (:func:`flow.merge_join_input`): what its claim read, or (without
        it, or when it was read for another version of the graph) read now."""
        node = self.job.node
        predecessors, states = graph.predecessors(node), graph.join_state_sources(node)
        read = None
        if self.attempt.join_input is not None:
            try:
                read = JoinInput.parse(predecessors, states, self.attempt.join_input)
            except JoinInputError:
                read = None
        if read is None:
            spec = join_input_spec(self.job.run_id, predecessors, states)
            try:
                read = self.context.runs.read_join_input(
                    spec, predecessors, states, self.context.tuning.read_chunk
                )
            except (JoinInputError, TypeError, ValueError) as error:
                raise StepError(f"node {node!r}: cannot read its join input: {error}") from None
        return flow.merge_join_input(graph, node, read)

    def _mapper_state(self, graph: Graph) -> dict[str, Any]:
        """A mapped instance's state: what its mapper kept (read once per worker and run)."""
        mapper = graph.mapper(self.job.node) or ""
        kept = self.context.runs.kept_state(self.job.run_id, mapper)
        if kept is None:
            raise StepError(f"node {self.job.node!r}: the state of its mapper {mapper!r} is gone")
        state: dict[str, Any] = json.loads(kept)
        return state

    def _not_here(self, node: str) -> str:
        """Why a run that started on another graph cannot go on here (a deploy removed a node)."""
        version = self.context.graph(self.job.package).version
        return (
            f"node {node!r} of the run's graph (version {self.job.graph_version}) is not in"
            f" this worker's graph (version {version})"
        )

    def failure(self, error: BaseException) -> Failure:
        """What recording this attempt's failure writes."""
        summary = f"{type(error).__name__}: {error}"
        return Failure(
            run_id=self.job.run_id,
            step=self.job.step,
            error=f"{self.job.step}: {summary}",
            step_error=f"{summary}\n\n{''.join(traceback.format_exception(error))}",
            started_at=self.started_at,
            worker=self.attempt.worker,
            attempt=self.attempt.number,
            input=to_json_or_repr(self.data),
        )


def call_module(function: Callable[[dict[str, Any]], Any], data: dict[str, Any], node: str) -> Any:
    """Call a module: what it tries in order to end its worker process fails its step instead.

    ``sys.exit()``, ``SystemExit`` and ``KeyboardInterrupt`` become a :class:`StepError`
    (RQ's own cold shutdown, a SystemExit raised in its signal handler, still ends the worker);
    a child the module forked that returns here exits at once instead of going on as a worker.
    """
    pid = os.getpid()
    try:
        return function(data)
    except (SystemExit, KeyboardInterrupt) as error:
        if _from_rq_signal_handler(error):
            raise
        what = f"{type(error).__name__}({error.args[0]!r})" if error.args else type(error).__name__
        raise StepError(
            f"node {node!r} tried to end its worker process ({what}); the step fails instead"
        ) from None
    finally:
        if os.getpid() != pid:  # a forked child: it must not go on as a worker
            logger.error(
                "node %s forked; its child %d returned to the worker: it exits", node, os.getpid()
            )
            os._exit(0)


def _from_rq_signal_handler(error: BaseException) -> bool:
    """Whether ``error`` was raised by RQ's worker itself (its cold shutdown), not a module."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and "/rq/worker" in frame.tb_frame.f_code.co_filename


def fail(step: StepRun, error: BaseException, ended: RunEnded) -> bool:
    """Record a step that raised: its failure and its run's, when RQ will not retry it.
    Returns whether its job should expire with its run (see :func:`expires_with_run`)."""
    job = step.job
    if not step.attempt.final:
        logger.info(
            "run %s step %s attempt %d failed, RQ retries it",
            job.run_id,
            job.step,
            step.attempt.number,
        )
        return False
    failure = step.failure(error)
    logger.warning("run %s step %s failed: %s", job.run_id, job.step, failure.error)
    outcome = step.context.runs.fail_step(failure)
    if outcome.run_ended:
        ended(job.run_id)
    return expires_with_run(outcome)


def expires_with_run(outcome: Outcome) -> bool:
    """Whether the RQ job whose end was just recorded should be kept no longer than its run's
    keys (``EZGRAPH_RUN_TTL``) rather than its ``result_ttl``: it ended its run, which may be
    in SQL, keys expiring, before RQ finishes the job; or its run had ended before (a stale
    run) or left Redis."""
    return outcome.run_ended or outcome.status != "ok"


def settle(context: Context, request: CompletionRequest, outcome: Outcome, ended: RunEnded) -> None:
    """After a completion was recorded: create the rest of a Map's instances, a chunk per
    call (the watchdog goes on if this worker dies meanwhile: :func:`create_map`); hand the
    run to the writer if it ended."""
    completion = request.completion
    crash_point(context.connection, context.keys, "after_record", completion.step)
    if outcome.run_ended:
        ended(completion.run_id)
    items = request.map_items
    if items is not None:
        if outcome.status == "ok":
            create_map(context, completion.run_id, items.node, ended)
        else:
            context.runs.discard_map(completion.run_id, items.token)
    logger.debug("run %s step %s finished (%s)", completion.run_id, completion.step, outcome.status)


def create_map(context: Context, run_id: str, node: str, ended: RunEnded) -> None:
    """Create a map's instances, a chunk per call, until none is left (each call goes on
    from where the last one, of any process, ended)."""

    def chunk() -> tuple[bool, bool]:
        crash_point(context.connection, context.keys, "map_chunk", f"{run_id}-{node}")
        return context.runs.create_map_chunk(run_id, node)

    _until_done(chunk, run_id, ended)


def sweep_stopped(context: Context, run_id: str, ended: RunEnded) -> None:
    """Sweep a run's jobs, a chunk per call, until none is left (a wide map's run: stopped,
    its waiting steps canceled and those in flight marked; retried, its failed steps
    requeued); the run may end with the last."""
    _until_done(lambda: context.runs.sweep(run_id), run_id, ended)


def _until_done(chunk: Callable[[], tuple[bool, bool]], run_id: str, ended: RunEnded) -> None:
    """Call ``chunk`` (returning: work is left, this call ended the run) until no work is
    left; a run it ends goes to ``ended``."""
    more = True
    while more:
        more, run_ended = chunk()
        if run_ended:
            ended(run_id)


def run_and_record(
    step: StepRun, ended: RunEnded, expire_with_run: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Run a step and record its end with one script call (a stock RQ worker's way); returns
    its output, or raises what the module raised, after recording the failure.
    ``expire_with_run`` is called before RQ finishes a job that should expire with its run."""
    try:
        request = step.call()
    except Exception as error:
        if fail(step, error, ended):
            expire_with_run()
        raise
    if request.waiting:  # recorded waiting for a signal: the RQ job ends, the step goes on later
        return request.output
    outcome = step.context.runs.complete(request)
    settle(step.context, request, outcome, ended)
    if expires_with_run(outcome):
        expire_with_run()
    return request.output


def resume_waiting(context: Context, run_id: str, step: str, ended: RunEnded) -> tuple[str, str]:
    """Complete a waiting step whose signal came, as any step completes (``flow.plan``, then
    ``complete_step``): its successors get its output plus ``{name: the signal's data}``.
    Safe to call twice, from anywhere (the sender, the watchdog): a step completes once.
    Returns ``resumed``, ``waiting`` (no signal yet) or ``ended`` (resumed before, or no
    longer waiting), and the signal's name."""
    fields, signal = context.runs.read_wait(run_id, step)
    name = fields.get("wait", "")
    if fields.get("status") != "waiting":
        return "ended", name
    if signal is None:
        return "waiting", name
    resume = json.loads(fields["resume"])
    job = StepJob.from_kwargs(resume["job"])
    attempt = Attempt(int(fields.get("attempts") or 1), None, fields.get("worker", ""))
    step_run = StepRun(context, job, attempt)
    step_run.started_at = fields.get("started_at") or step_run.started_at
    output = {**json.loads(fields.get("output") or "{}"), name: json.loads(signal)}
    output_json = to_json(output, f"step {step!r}: output")
    graph = context.graph_of(job)
    request = step_run.request(graph, resume["data"], flow.StepResult(output), output_json, None)
    outcome = context.runs.complete(request)
    settle(context, request, outcome, ended)
    if outcome.status != "ok":
        return "ended", name
    logger.info("run %s step %s resumed by signal %r", run_id, step, name)
    return "resumed", name
