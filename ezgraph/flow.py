"""Where a run goes after a step: what its module returned, planned into successor jobs.

Pure (no Redis): :func:`check_result` validates a module's return value; :func:`plan` says
which jobs the step's completion may create and which part of the graph its walk may visit.
The walk itself runs in Lua (``run.complete``), atomically with the join counters it reads:
a plain successor is created when the step succeeds, a join or a node after a skipped branch
only when its last arrival comes. The plan holds every job the walk can make ready, so the
walk never needs one the plan lacks (``tests/unit/test_flow.py`` checks it against a model of
the walk on every route of many graphs); a run whose graph is not the worker's fails instead.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StepError
from .model.graph import Graph
from .model.module_api import Map, Route, Wait
from .model.step_job import StepJob
from .state.protocol import JoinInput, WalkNode


@dataclass(frozen=True)
class StepResult:
    """A module's return value, checked: the output and where the run goes next."""

    output: dict[str, Any]
    chosen: tuple[str, ...] | None = None  # the successors a Route chose (None: all)
    mapped: Map | None = None
    wait: Wait | None = None  # the signal the step waits for before it completes


def check_result(graph: Graph, node: str, index: int | None, value: Any) -> StepResult:
    """Validate what a module returned: a dict, a :class:`Route`, a :class:`Map` or a
    :class:`Wait`.

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
    if isinstance(value, Wait):
        _check_wait(node, value)
        return StepResult(_output_dict(node, value.output), wait=value)
    return StepResult(_output_dict(node, value))


def _check_wait(node: str, wait: Wait) -> None:
    if not isinstance(wait.name, str) or not wait.name.isidentifier():
        raise StepError(f"node {node!r}: Wait name must be an identifier, not {wait.name!r}")
    timeout = wait.timeout
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, numbers.Real)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise StepError(f"node {node!r}: Wait timeout must be a positive number, not {timeout!r}")


def _output_dict(node: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise StepError(f"node {node!r} returned {type(value).__name__}, expected a dict")
    return dict(value)


@dataclass(frozen=True)
class Plan:
    """What recording a step's success may create: ``jobs`` (each created when its step becomes
    ready), the ``walk`` (the nodes the walk may visit), and whether the state it passes on is
    kept in Redis (where a join, a mapped node's successor or the run's result reads it)."""

    jobs: tuple[StepJob, ...]
    walk: tuple[WalkNode, ...]
    keeps_state: bool


def plan(graph: Graph, job: StepJob, result: StepResult, new_state: dict[str, Any]) -> Plan:
    """The plan of a step's completion.

    A successor with one predecessor gets ``new_state`` in its job; a join (and the node after
    a mapped node) reads its input when it starts, so its job carries no state. A Map's
    instances are not in it (:func:`map_instances`): they are created a chunk at a time.
    """
    chosen = None if result.chosen is None else frozenset(result.chosen)
    mapped = result.mapped.node if result.mapped is not None else None
    shape = _shape(graph, job.node, job.index is not None, chosen, mapped)
    run_id, package, version = job.run_id, graph.package, job.graph_version
    jobs = [
        StepJob(run_id, name, package, reads_join_input=True, graph_version=version)
        for name in shape.joins
    ]
    jobs += [
        StepJob(run_id, name, package, state=new_state, graph_version=version)
        for name in shape.direct
    ]
    return Plan(tuple(jobs), shape.walk, shape.keeps_state)


def map_instances(graph: Graph, job: StepJob, mapped: Map) -> Iterator[StepJob]:
    """The jobs of a Map's instances, in item order, each with its item; each reads the state
    its mapper kept as it starts (a job holding it would put the state in Redis once per item)."""
    for index, item in enumerate(mapped.items):
        yield StepJob(
            job.run_id,
            mapped.node,
            graph.package,
            index=index,
            item=item,
            item_key=mapped.key,
            reads_mapper_state=True,
            graph_version=job.graph_version,
        )


@dataclass(frozen=True)
class _Shape:
    """The part of a plan that depends on the graph only (cached per graph and case)."""

    direct: tuple[str, ...]  # successors created with the state
    joins: tuple[str, ...]  # nodes created if ready, reading their join input
    walk: tuple[WalkNode, ...]
    keeps_state: bool


@functools.lru_cache(maxsize=4096)
def _shape(
    graph: Graph, node: str, instance: bool, chosen: frozenset[str] | None, mapped: str | None
) -> _Shape:
    successors = graph.successors(node)
    visited = [node, *successors]
    direct: list[str] = []
    joins: list[str] = []
    if instance:  # a mapped instance: its node's successors may become ready
        joins += successors
    else:
        for successor in successors:
            if successor == mapped:
                after = graph.successors(successor)
                joins += after
                visited += after
            elif graph.is_join(successor):
                joins.append(successor)
            elif chosen is None or successor in chosen:
                direct.append(successor)
        if chosen is not None:
            # Skips travel transitively: a join below a branch not chosen may become ready.
            skipped = [s for s in successors if s not in chosen]
            below = {d for s in skipped for d in graph.descendants(s)}
            for name in graph.nodes:
                if name in below:
                    visited.append(name)
                    if graph.is_join(name) and name not in joins:
                        joins.append(name)
    walk = tuple(
        (name, len(graph.predecessors(name)), graph.successors(name))
        for name in dict.fromkeys(visited)
    )
    # What a join, a mapped node's instances and successor, or the result reads; never an
    # instance's state (the join after a mapped node reads the mapper's; the result, a sink's).
    keeps = not instance and (
        not successors or mapped is not None or any(graph.is_join(s) for s in successors)
    )
    return _Shape(tuple(direct), tuple(joins), walk, keeps)


def merge_join_input(
    graph: Graph, node: str, read: JoinInput
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A join's input: the state it passes on, the lists it gathered, and each predecessor's
    own output by name.

    The state is its predecessors' states merged in GRAPH_CONNECTIONS order (a later
    predecessor's value wins a conflicting key); a mapped predecessor contributes its
    mapper's state. The gathered lists, ``{node: [outputs in item order]}`` per mapped
    predecessor, are in the join's data but not in the state it passes on: a map's width
    stays out of every later step and the run's result, which get what the join returns.
    Skipped predecessors contribute nothing.
    """
    state: dict[str, Any] = {}
    gathered: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for predecessor in graph.predecessors(node):
        if read.statuses.get(predecessor) != "finished":
            continue
        if predecessor in read.mapped:
            items = [json.loads(o) if o else None for o in _taken(read.mapped[predecessor])]
            kept = read.states.get(graph.mapper(predecessor) or "")
            state.update(json.loads(kept) if kept else {})
            gathered[predecessor] = items
            outputs[predecessor] = items
        else:
            kept = read.states.get(predecessor)
            state.update(json.loads(kept) if kept else {})
            output = read.outputs.get(predecessor)
            outputs[predecessor] = json.loads(output) if output else None
    return state, gathered, outputs


def _taken(texts: list[str | None]) -> Iterator[str | None]:
    """Each of ``texts``, dropped from the list as it is taken: a join decoding 1,000,000
    outputs holds the text of only those not yet decoded beside the objects."""
    for n, text in enumerate(texts):
        texts[n] = None
        yield text
