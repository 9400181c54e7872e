"""What happens when a step runs: the RQ job function every step job calls.

``run_step`` resolves the node's module function, gives it the state, checks what it returned,
then records the outcome and creates the ready successors in one Redis call (Lua), so that a
worker dying at any instant neither loses nor duplicates a successor. The job's RQ result is
the step's output, so ``Job.return_value()`` and rq-dashboard show it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rq.job import Job, get_current_job

from .context import Runtime, StepInput
from .errors import PayloadError, StepError
from .faults import crash_point
from .model.graph import Graph
from .model.module_api import Map, Route, StepContext, reset_current_step, set_current_step
from .settings import Settings
from .state.runs import PreparedJob, RunBook, gathered_from, utcnow_iso
from .workers.stock import companion_for

logger = logging.getLogger(__name__)

_installed: Runtime | None = None
_from_env: dict[int, Runtime] = {}
_lock = threading.Lock()


def install_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one steps of this process use (ezgraph's workers do this)."""
    global _installed
    _installed = runtime


def runtime_for(job: Job | None) -> Runtime:
    """The installed runtime, or one built from the environment on the job's connection.

    The second case is a stock ``rq worker``: it only knows the job, so the settings come from
    the worker's environment (``DATABASE_URL``, ``EZGRAPH_KEY_PREFIX``...) once per connection.
    """
    if _installed is not None:
        return _installed
    if job is None:
        raise StepError("run_step must run inside an RQ job or with an installed runtime")
    with _lock:
        runtime = _from_env.get(id(job.connection))
        if runtime is None:
            runtime = Runtime(Settings.from_env(), job.connection)
            _from_env[id(job.connection)] = runtime
        return runtime


def run_step(
    run_id: str,
    node: str,
    package: str,
    state: dict[str, Any] | None = None,
    gather: bool = False,
    index: int | None = None,
    item: Any = None,
    key: str = "item",
) -> dict[str, Any]:
    """Run one step of one run; the RQ job function behind every ezgraph step."""
    job = get_current_job()
    runtime = runtime_for(job)
    step_input = StepInput(state=state, gather=gather, index=index, item=item, key=key)
    if job is None:
        return execute_step(runtime, job, run_id, node, package, step_input)
    # A stock worker's process gets a companion thread: it beats for the running step and
    # writes ended runs to SQL in batches, except in a work-horse (RQ sets RQ_JOB_ID there),
    # which exits right after its job: there the run is written at once.
    companion = companion_for(runtime)
    horse = os.environ.get("RQ_JOB_ID") == job.id
    with companion.running(job.id):
        return execute_step(
            runtime,
            job,
            run_id,
            node,
            package,
            step_input,
            save=None if horse else companion.save_later,
        )


@dataclass(frozen=True)
class StepResult:
    """A module's return value, checked: the output and where the run goes next."""

    output: dict[str, Any]
    chosen: tuple[str, ...] | None = None
    mapped: Map | None = None


@dataclass(frozen=True)
class Completion:
    """A step that succeeded, ready to be recorded: its output and the completion arguments."""

    run_id: str
    step: str
    output: dict[str, Any]
    args: tuple[Any, ...]
    gatherers: tuple[str, ...] = ()


def execute_step(
    runtime: Runtime,
    job: Job | None,
    run_id: str,
    node: str,
    package: str,
    step_input: StepInput,
    save: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the module of ``node`` and record the outcome; raises what the module raised.

    An ended run is written to SQL by ``save`` (default: at once, here).
    """
    completion = run_module(runtime, job, run_id, node, package, step_input)
    outcome = runtime.book.complete(completion.run_id, *completion.args)
    crash_point(runtime.connection, runtime.settings.key_prefix, "after_record", completion.step)
    after_completion(
        runtime, package, completion, outcome.missing, outcome.run_ended, save=save is None
    )
    if outcome.run_ended and save is not None:
        save(completion.run_id)
    logger.debug("run %s step %s finished (%s)", run_id, completion.step, outcome.status)
    return completion.output


def after_completion(
    runtime: Runtime,
    package: str,
    completion: Completion,
    missing: Sequence[str],
    ended: bool,
    save: bool = True,
) -> None:
    """Create the jobs a completion found ready without one; write the run if it ended."""
    if missing:
        graph = runtime.graph(package)
        runtime.book.ensure(
            completion.run_id,
            [
                runtime.prepare_job(graph, completion.run_id, name, StepInput(gather=True))
                for name in missing
            ],
        )
    if ended and save:
        runtime.save_runs([completion.run_id])


def run_module(
    runtime: Runtime,
    job: Any,
    run_id: str,
    node: str,
    package: str,
    step_input: StepInput,
    before_failure: Callable[[], None] | None = None,
) -> Completion:
    """Run the module of ``node`` and build what recording its success needs.

    A failure is recorded here (when no retry is left) and re-raised for RQ to see;
    ``before_failure`` runs first (the fast worker records the steps it ran before this one).
    ``job`` is the RQ job, or anything with its ``retries_left``, ``meta`` and ``worker_name``.
    """
    graph = runtime.graph(package)
    index = step_input.index
    step = node if index is None else f"{node}-{index}"
    started_at = utcnow_iso()
    worker = (job.worker_name if job is not None else None) or ""
    attempt = _attempt(job)
    outputs: dict[str, Any] = {}
    state = step_input.state or {}
    data: dict[str, Any] = {}
    token = None
    try:
        if step_input.gather:
            state, outputs = gather_input(runtime, graph, run_id, node, step_input.gathered)
        data = dict(state)
        if index is not None:
            data[step_input.key] = step_input.item
        context = StepContext(run_id, node, index, attempt, runtime.settings.database_url, outputs)
        token = set_current_step(context)
        result = check_result(graph, node, index, runtime.function(graph, node)(data))
        output_json = encode_json(result.output, runtime.settings.max_payload_bytes, step)
    except Exception as error:
        if before_failure is not None:
            before_failure()
        if job is None or not job.retries_left:
            summary = f"{type(error).__name__}: {error}"
            detail = f"{summary}\n\n{traceback.format_exc()}"
            logger.warning("run %s step %s failed: %s", run_id, step, summary)
            outcome = runtime.book.fail(
                run_id,
                step,
                f"{step}: {summary}",
                started_at,
                worker,
                attempt,
                _safe_json(data),
                step_error=detail,
            )
            if outcome.run_ended:
                runtime.save_runs([run_id])
        else:
            logger.info("run %s step %s attempt %d failed, RQ retries it", run_id, step, attempt)
        raise
    finally:
        if token is not None:
            reset_current_step(token)

    crash_point(runtime.connection, runtime.settings.key_prefix, "after_module", step)
    new_state = {**data, **result.output}
    jobs = successor_jobs(runtime, graph, run_id, node, index, new_state, result)
    keep_state = _keeps_state(graph, node, result)
    args = RunBook.completion_args(
        step,
        node,
        index,
        output_json,
        encode_json(new_state, None, step) if keep_state else None,
        result.chosen,
        (result.mapped.node, len(result.mapped.items)) if result.mapped else None,
        started_at,
        worker,
        attempt,
        jobs,
    )
    return Completion(run_id, step, result.output, tuple(args))


def check_result(graph: Graph, node: str, index: int | None, value: Any) -> StepResult:
    """Validate what a module returned: a dict, a :class:`Route` or a :class:`Map`.

    Raises:
        StepError: naming the node, for anything else or a route/map to an undeclared node.
    """
    successors = graph.successors(node)
    if isinstance(value, Route):
        if index is not None:
            raise StepError(f"node {node!r}: a mapped instance cannot route")
        for target in value.to:
            if target not in successors:
                raise StepError(f"node {node!r} routed to {target!r}, which is not a successor")
        return StepResult(_output_dict(node, value.output), chosen=value.to)
    if isinstance(value, Map):
        if index is not None:
            raise StepError(f"node {node!r}: a mapped instance cannot map again")
        if value.node not in successors:
            raise StepError(f"node {node!r} mapped over {value.node!r}, which is not a successor")
        if len(graph.predecessors(value.node)) != 1:
            raise StepError(
                f"node {node!r} mapped over {value.node!r}, which has other predecessors"
            )
        return StepResult(_output_dict(node, value.output), mapped=value)
    return StepResult(_output_dict(node, value))


def _output_dict(node: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise StepError(f"node {node!r} returned {type(value).__name__}, expected a dict")
    return dict(value)


def encode_json(value: Any, limit: int | None, step: str) -> str:
    """``value`` as compact JSON, refusing what JSON cannot hold or what exceeds ``limit`` bytes."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PayloadError(f"step {step!r}: output is not JSON-serializable: {error}") from None
    if limit is not None and len(text.encode()) > limit:
        raise PayloadError(
            f"step {step!r}: output is {len(text.encode())} bytes, over the {limit}-byte limit"
        )
    return text


def successor_jobs(
    runtime: Runtime,
    graph: Graph,
    run_id: str,
    node: str,
    index: int | None,
    new_state: dict[str, Any],
    result: StepResult,
) -> list[PreparedJob]:
    """Every job the completion script may need to create for this step's successors.

    A successor with one predecessor gets the state in its job; a join (or the node after a
    mapped node) gathers its input from Redis when it starts, so its job carries no state.
    """

    def gathering(name: str) -> PreparedJob:
        return runtime.prepare_job(graph, run_id, name, StepInput(gather=True))

    if index is not None:  # a mapped instance: its node's successors may become ready
        return [gathering(s) for s in graph.successors(node)]
    jobs: list[PreparedJob] = []
    mapped = result.mapped
    for successor in graph.successors(node):
        if mapped is not None and successor == mapped.node:
            jobs.extend(
                runtime.prepare_job(
                    graph,
                    run_id,
                    successor,
                    StepInput(state=new_state, index=i, item=item, key=mapped.key),
                )
                for i, item in enumerate(mapped.items)
            )
            jobs.extend(gathering(after) for after in graph.successors(successor))
        elif graph.is_join(successor):
            jobs.append(gathering(successor))
        else:
            jobs.append(runtime.prepare_job(graph, run_id, successor, StepInput(state=new_state)))
    if result.chosen is not None:
        # Skips travel transitively: a join further down may become ready in this same call.
        listed = {job.step for job in jobs}
        jobs.extend(
            gathering(d) for d in graph.descendants(node) if graph.is_join(d) and d not in listed
        )
    return jobs


def gather_input(
    runtime: Runtime,
    graph: Graph,
    run_id: str,
    node: str,
    claimed: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A join's input: its predecessors' states merged in GRAPH_CONNECTIONS order (a later
    predecessor's value wins a conflicting key), and each predecessor's own output by name.

    A mapped predecessor contributes its mapper's state plus ``{node: [outputs in item order]}``.
    Skipped predecessors contribute nothing. ``claimed``: what the fast worker's claim read for
    the job (``StepInput.gathered``); without it, or when it was read for another version of
    the graph, it is read now.
    """
    predecessors = graph.predecessors(node)
    states = graph.gathered_states(node)
    gathered = None
    if claimed is not None:
        with contextlib.suppress(ValueError):
            gathered = gathered_from(predecessors, states, claimed)
    if gathered is None:
        gathered = runtime.book.gather(run_id, predecessors, states)
    state: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for pred in predecessors:
        if gathered.statuses.get(pred) != "finished":
            continue
        if pred in gathered.mapped:
            items = [json.loads(o) if o else None for o in gathered.mapped[pred]]
            kept = gathered.states.get(graph.mapper(pred) or "")
            state.update(json.loads(kept) if kept else {})
            state[pred] = items
            outputs[pred] = items
        else:
            kept = gathered.states.get(pred)
            state.update(json.loads(kept) if kept else {})
            output = gathered.outputs.get(pred)
            outputs[pred] = json.loads(output) if output else None
    return state, outputs


def _keeps_state(graph: Graph, node: str, result: StepResult) -> bool:
    """Keep the passed-on state in Redis where something will read it: the run's result (a
    sink), a join, or the node after a mapped node."""
    successors = graph.successors(node)
    return not successors or result.mapped is not None or any(graph.is_join(s) for s in successors)


def _attempt(job: Job | None) -> int:
    """1 for the first try; RQ only keeps ``retries_left``, the job's meta keeps the maximum."""
    if job is None or not job.meta.get("retries"):
        return 1
    return int(job.meta["retries"]) - int(job.retries_left or 0) + 1


def _safe_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(repr(value))
