"""The graph model: nodes, their successors and the function each node runs.

Pure: loading imports the user's modules package, but nothing here talks to Redis or SQL.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import keyword
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any

from ..errors import GraphError
from ..settings import MAX_SECONDS
from .records import MAX_NAME

StepFunction = Callable[[dict[str, Any]], Any]

DEFAULT_PACKAGE = "modules"  # looked for in the working directory when none is configured
EXAMPLE_PACKAGE = "ezgraph.example"  # the example graph shipped with ezgraph, used otherwise


@dataclass(frozen=True)
class NodePolicy:
    """How one node's steps are run by RQ: timeout in seconds and retries with their intervals."""

    timeout: int
    retries: int
    retry_intervals: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: plans are cached per graph
class Graph:
    """A validated graph: ``connections`` maps each node to its successors, in declared order.

    ``functions`` maps each node to the dotted path of what it runs (``pkg.mod:func``).
    ``routes`` lists, for a node that declares them, the successors it may route to.
    ``unavailable``: in a run's graph that is not this process's (:meth:`for_run`), the nodes
    this process has no function for. ``deadline`` and ``max_steps``: a run's defaults.
    """

    connections: Mapping[str, tuple[str, ...]]
    functions: Mapping[str, str]
    package: str = DEFAULT_PACKAGE
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unavailable: frozenset[str] = frozenset()
    deadline: float | None = None  # DEADLINE: seconds a run may take by default
    max_steps: int | None = None  # MAX_STEPS: steps a run may start by default

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node, in the order GRAPH_CONNECTIONS declares them."""
        return tuple(self.connections)

    def sink_first(self) -> tuple[str, ...]:
        """Every node, those furthest from a source first (declared order among equals).

        The queue order of a worker serving several nodes: it takes the later steps of runs
        already under way before it starts new runs, as a stack of stages drains downstream
        first, so runs end at a steady pace instead of all at the end of a burst.
        """
        waiting = {node: len(self.predecessors(node)) for node in self.nodes}
        depth = dict.fromkeys(self.nodes, 0)  # the longest path from a source
        ready = [node for node, count in waiting.items() if count == 0]
        while ready:
            node = ready.pop()
            for successor in self.connections[node]:
                depth[successor] = max(depth[successor], depth[node] + 1)
                waiting[successor] -= 1
                if waiting[successor] == 0:
                    ready.append(successor)
        return tuple(sorted(self.nodes, key=lambda node: -depth[node]))

    def successors(self, node: str) -> tuple[str, ...]:
        """The nodes that run after ``node``."""
        return self.connections[node]

    def predecessors(self, node: str) -> tuple[str, ...]:
        """The nodes ``node`` waits for, in GRAPH_CONNECTIONS order (the join merge order)."""
        return self._predecessors[node]

    @cached_property
    def _predecessors(self) -> dict[str, tuple[str, ...]]:
        # Built once: every step asks for the predecessors of its successors (is_join), and a
        # join's step for its own; a scan of every node's successors for each answer showed
        # in a 1 -> 8 -> 1 profile.
        found: dict[str, list[str]] = {node: [] for node in self.connections}
        for node, successors in self.connections.items():
            for successor in successors:
                found[successor].append(node)
        return {node: tuple(preds) for node, preds in found.items()}

    def mapper(self, node: str) -> str | None:
        """The node that may map over ``node``: its only predecessor (None unless it has one)."""
        predecessors = self._predecessors[node]
        return predecessors[0] if len(predecessors) == 1 else None

    def join_state_sources(self, node: str) -> tuple[str, ...]:
        """The kept states a step of ``node`` reads for its join input: its predecessors',
        then the mapper's of each predecessor (it may have been mapped)."""
        return self._join_state_sources[node]

    @cached_property
    def _join_state_sources(self) -> dict[str, tuple[str, ...]]:
        found = {}
        for node, predecessors in self._predecessors.items():
            mappers = [m for m in map(self.mapper, predecessors) if m is not None]
            found[node] = tuple(dict.fromkeys([*predecessors, *mappers]))
        return found

    def join_arrivals_from(self, start: str) -> dict[str, int]:
        """The arrivals each join reachable from ``start`` can receive, for the joins that
        cannot receive all of theirs (a predecessor no path from ``start`` reaches counts as
        skipped from the outset)."""
        reachable = {start, *self.descendants(start)}
        arrivals = {
            node: sum(1 for p in self.predecessors(node) if p in reachable)
            for node in reachable
            if self.is_join(node) and node != start
        }
        return {node: n for node, n in arrivals.items() if n < len(self.predecessors(node))}

    def is_join(self, node: str) -> bool:
        """True when ``node`` has more than one predecessor."""
        return len(self.predecessors(node)) > 1

    def sinks(self) -> tuple[str, ...]:
        """Nodes with no successor, in declared order."""
        return tuple(n for n, succ in self.connections.items() if not succ)

    def descendants(self, node: str) -> tuple[str, ...]:
        """Every node reachable from ``node`` (not including it), in declared order."""
        seen: set[str] = set()
        stack = list(self.connections[node])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.connections[current])
        return tuple(n for n in self.connections if n in seen)

    def policy(
        self, node: str, timeout: int, retries: int, intervals: tuple[int, ...]
    ) -> NodePolicy:
        """The node's run policy: its POLICIES entry over the given defaults."""
        declared = self.policies.get(node, {})
        return NodePolicy(
            timeout=int(declared.get("timeout", timeout)),
            retries=int(declared.get("retries", retries)),
            retry_intervals=tuple(int(i) for i in declared.get("retry_intervals", intervals)),
        )

    def to_json(self) -> str:
        """The shape the Redis scripts read: successors and in-degree of every node."""
        indegree = {node: len(self.predecessors(node)) for node in self.connections}
        succ = {node: list(s) for node, s in self.connections.items()}
        return json.dumps({"succ": succ, "indeg": indegree}, separators=(",", ":"))

    @cached_property
    def version(self) -> str:
        """A short fingerprint of the graph's shape and functions: a run keeps the version it
        started with, and finishes on that graph's shape."""
        text = json.dumps([self.connections, self.functions], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def for_run(self, shape: Mapping[str, Any]) -> Graph:
        """The graph of a run that started on another version: its shape (``to_json``'s
        ``succ``), with this graph's functions, routes and policies where it has the node."""
        connections = {node: tuple(successors) for node, successors in shape["succ"].items()}
        return Graph(
            connections,
            {node: self.functions.get(node, f"{self.package}.{node}") for node in connections},
            self.package,
            {node: r for node, r in self.routes.items() if node in connections},
            {node: p for node, p in self.policies.items() if node in connections},
            frozenset(node for node in connections if node not in self.connections),
        )

    def resolve(self, node: str) -> StepFunction:
        """Import and return the callable that node ``node`` runs.

        Raises:
            GraphError: when the node is unknown or its function cannot be imported.
        """
        if node not in self.functions:
            raise GraphError(f"unknown node {node!r}")
        return _import_function(node, self.functions[node])


def build_graph(
    connections: Mapping[str, Any],
    functions: Mapping[str, str] | None = None,
    package: str = DEFAULT_PACKAGE,
    routes: Mapping[str, Any] | None = None,
    policies: Mapping[str, Mapping[str, Any]] | None = None,
    check_functions: bool = True,
    deadline: Any = None,
    max_steps: Any = None,
) -> Graph:
    """Validate a graph declaration and return the :class:`Graph`.

    Each node runs ``functions[node]`` when given, else ``process`` of ``<package>.<node>``.

    Raises:
        GraphError: naming the node, for a non-identifier name, an unknown successor, a cycle,
            a node with no importable function, or a route target that is not a successor.
    """
    graph_connections = _connections(connections)
    paths = _function_paths(functions, graph_connections, package)
    graph_routes = _routes(routes, graph_connections)
    for node, policy in _mapping(policies, "POLICIES", '{node: {"timeout": 30, ...}}').items():
        if node not in graph_connections:
            raise GraphError(f"POLICIES names {node!r}, which is not in GRAPH_CONNECTIONS")
        _check_policy(node, policy)
    if deadline is not None and not valid_deadline(deadline):
        raise GraphError(
            f"DEADLINE must be seconds above 0, at most {MAX_SECONDS}, got {deadline!r}"
        )
    if max_steps is not None and not valid_max_steps(max_steps):
        raise GraphError(f"MAX_STEPS must be a whole number from 1, got {max_steps!r}")
    graph = Graph(
        graph_connections,
        paths,
        package,
        graph_routes,
        dict(policies or {}),
        deadline=None if deadline is None else float(deadline),
        max_steps=max_steps,
    )
    if check_functions:
        for node in graph.nodes:
            graph.resolve(node)
    return graph


def valid_deadline(value: Any) -> bool:
    """True for a deadline: seconds (int or float) above 0 and at most ``MAX_SECONDS``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and 0 < value <= MAX_SECONDS


def valid_max_steps(value: Any) -> bool:
    """True for a step budget: a whole number from 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _connections(connections: Any) -> dict[str, tuple[str, ...]]:
    """GRAPH_CONNECTIONS checked: identifiers, known successors listed once, no cycle."""
    if not isinstance(connections, Mapping) or not connections:
        raise GraphError("GRAPH_CONNECTIONS must be a non-empty dict {node: [successors]}")
    checked: dict[str, tuple[str, ...]] = {}
    for node, successors in connections.items():
        _check_name(node)
        if isinstance(successors, str) or not isinstance(successors, (list, tuple)):
            raise GraphError(f"node {node!r}: successors must be a list of node names")
        for successor in successors:
            _check_name(successor)
            if successor not in connections:
                raise GraphError(f"node {node!r}: unknown successor {successor!r}")
        if len(set(successors)) != len(successors):
            raise GraphError(f"node {node!r}: a successor is listed twice")
        checked[node] = tuple(successors)
    _check_acyclic(checked)
    return checked


def _function_paths(
    functions: Any, connections: Mapping[str, tuple[str, ...]], package: str
) -> dict[str, str]:
    """What each node runs: its MODULES entry, else ``<package>.<node>`` (its ``process``, or
    its ModuleWorker class)."""
    declared = _mapping(functions, "MODULES", '{node: "package.module:function"}')
    for node, path in declared.items():
        if node not in connections:
            raise GraphError(f"MODULES names {node!r}, which is not in GRAPH_CONNECTIONS")
        if not isinstance(path, str):
            raise GraphError(f"MODULES[{node!r}] must be a string, got {type(path).__name__}")
    return {node: declared.get(node, f"{package}.{node}") for node in connections}


def _routes(routes: Any, connections: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """ROUTES checked: each target a declared successor of its node."""
    checked: dict[str, tuple[str, ...]] = {}
    for node, targets in _mapping(routes, "ROUTES", "{node: [successors]}").items():
        if node not in connections:
            raise GraphError(f"ROUTES names {node!r}, which is not in GRAPH_CONNECTIONS")
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
            raise GraphError(f"ROUTES[{node!r}] must be a list of successors")
        for target in targets:
            if target not in connections[node]:
                raise GraphError(f"node {node!r}: route target {target!r} is not a successor")
        checked[node] = tuple(targets)
    return checked


def _mapping(value: Any, name: str, shape: str) -> Mapping[str, Any]:
    """``value`` (a package's MODULES, ROUTES or POLICIES), checked to be a dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise GraphError(f"{name} must be a dict {shape}, got {type(value).__name__}")
    return value


def _check_policy(node: str, policy: Any) -> None:
    """A POLICIES entry: known keys, whole numbers in range (as the EZGRAPH_* defaults)."""
    if not isinstance(policy, Mapping):
        raise GraphError(f"POLICIES[{node!r}] must be a dict, got {type(policy).__name__}")
    if "rate_limit" in policy:  # RQ 3's concurrency limits (see the README's RQ versions)
        raise GraphError(
            f"node {node!r}: rate_limit is not supported; to run at most N of its steps at"
            " once, serve its queue with N workers"
        )
    unknown = set(policy) - {"timeout", "retries", "retry_intervals"}
    if unknown:
        raise GraphError(f"node {node!r}: unknown policy keys {sorted(unknown)}")

    def whole(value: Any, low: int) -> bool:
        number = isinstance(value, int) and not isinstance(value, bool)
        return number and low <= value <= MAX_SECONDS

    if "timeout" in policy and not whole(policy["timeout"], 1):
        raise GraphError(f"node {node!r}: timeout must be whole seconds from 1 to {MAX_SECONDS}")
    if "retries" in policy and not whole(policy["retries"], 0):
        raise GraphError(f"node {node!r}: retries must be a whole number from 0")
    intervals = policy.get("retry_intervals", [])
    if not isinstance(intervals, (list, tuple)) or not all(whole(i, 0) for i in intervals):
        raise GraphError(f"node {node!r}: retry_intervals must be a list of whole seconds")


def default_package() -> str:
    """The modules package to use when none is configured: ``modules`` when the working
    directory (or ``sys.path``) holds one, else the example graph shipped with ezgraph."""
    try:
        found = importlib.util.find_spec(DEFAULT_PACKAGE) is not None
    except (ImportError, ValueError):
        found = True  # it exists but is broken: importing it names the error
    return DEFAULT_PACKAGE if found else EXAMPLE_PACKAGE


def load_graph(package: str | None = None) -> Graph:
    """Import the modules package ``package`` and build its validated graph.

    The package declares ``GRAPH_CONNECTIONS`` and optionally ``MODULES`` (node -> "pkg.mod:func"),
    ``ROUTES`` (node -> successors it may route to), ``POLICIES`` (node -> timeout/retries),
    ``DEADLINE`` (seconds) and ``MAX_STEPS`` (a run's defaults). ``None`` means
    :func:`default_package`.
    """
    package = package or default_package()
    module = _import_package(package)
    connections = getattr(module, "GRAPH_CONNECTIONS", None)
    if connections is None:
        raise GraphError(f"package {package!r} defines no GRAPH_CONNECTIONS")
    return build_graph(
        connections,
        functions=getattr(module, "MODULES", None),
        package=package,
        routes=getattr(module, "ROUTES", None),
        policies=getattr(module, "POLICIES", None),
        deadline=getattr(module, "DEADLINE", None),
        max_steps=getattr(module, "MAX_STEPS", None),
    )


def _import_package(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name and package.startswith(error.name):
            raise GraphError(
                f"cannot import modules package {package!r}"
                " (set EZGRAPH_MODULES, or run from the folder that holds it)"
            ) from None
        raise GraphError(f"importing {package!r} failed: {error}") from error
    except (Exception, SystemExit) as error:  # a package that ends the process as it loads
        raise GraphError(
            f"importing {package!r} failed: {type(error).__name__}: {error}"
        ) from error


def _import_function(node: str, path: str) -> StepFunction:
    """What ``node`` runs: ``module:function``, or a module's ``process`` or ModuleWorker class
    (the seed's style: in ``<package>/<node>.py``, or in ``worker_<node>.py`` beside it)."""
    module_name, _, attribute = path.partition(":")
    module = _import_module(node, module_name, fallback=None if attribute else f"worker_{node}")
    target = getattr(module, attribute or "process", None)
    if target is None and not attribute:
        target = _module_worker_class(module)
    if target is None:
        defines = attribute or "process"
        raise GraphError(f"node {node!r} has no function: {module.__name__} defines no {defines!r}")
    if inspect.isclass(target):
        # A ModuleWorker subclass (the seed's way to write a module): run its process().
        try:
            instance = target()
        except Exception as error:
            raise GraphError(
                f"node {node!r}: class {target.__name__} cannot be created:"
                f" {type(error).__name__}: {error}"
            ) from None
        target = getattr(instance, "process", None)
        path = f"class {path}"
    if not callable(target):
        raise GraphError(f"node {node!r}: {path} has no callable process(data)")
    return target  # type: ignore[no-any-return]


def _import_module(node: str, name: str, fallback: str | None) -> ModuleType:
    """Import ``name`` (or, when it does not exist, ``fallback``), in one line when it fails."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if not (error.name and name.startswith(error.name)):
            raise GraphError(f"node {node!r}: importing {name} failed: {error}") from error
        if fallback is not None and importlib.util.find_spec(fallback) is not None:
            return _import_module(node, fallback, None)
        raise GraphError(f"node {node!r} has no module: {name} not found") from None
    except (Exception, SystemExit) as error:
        raise GraphError(
            f"node {node!r}: importing {name} failed: {type(error).__name__}: {error}"
        ) from error


def _module_worker_class(module: ModuleType) -> Any:
    """The ModuleWorker subclass ``module`` defines, or None."""
    return next(
        (
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and getattr(value, "_ezgraph_module_worker", False)
            and value.__module__ == module.__name__
        ),
        None,
    )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise GraphError(f"node name {name!r} is not a Python identifier")
    if len(name) > MAX_NAME:
        raise GraphError(f"node name {name[:20]}... is {len(name)} characters; at most {MAX_NAME}")


def _check_acyclic(connections: Mapping[str, tuple[str, ...]]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for successor in connections[node]:
            if state.get(successor) == 1:
                cycle = [*path[path.index(successor) :], successor]
                raise GraphError(f"node {successor!r} is in a cycle: {' -> '.join(cycle)}")
            if successor not in state:
                visit(successor, [*path, successor])
        state[node] = 2

    for node in connections:
        if node not in state:
            visit(node, [node])
