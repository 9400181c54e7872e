"""The exceptions ezgraph raises: one tree under :class:`EzgraphError`.

Each class's docstring is its meaning; the CLI prints ``str(error)`` on one line.
"""

from __future__ import annotations


class EzgraphError(Exception):
    """Base class of every error ezgraph raises on purpose."""

    exit_code = 1


class UsageError(EzgraphError):
    """Raised when the caller asked for something malformed (bad payload, unknown node)."""

    exit_code = 2


class GraphError(UsageError):
    """Raised when GRAPH_CONNECTIONS or its modules are invalid; the message names the node."""


class PayloadError(UsageError):
    """Raised when a payload is not a JSON object, not JSON-serializable, or too large."""


class RunNotFound(EzgraphError):
    """Raised when no run with the given id exists in Redis or in the database."""


class ScheduleNotFound(EzgraphError):
    """Raised when no schedule has the given name."""


class InvalidRunOperation(EzgraphError):
    """Raised when an operation does not fit a run's state (cancel a finished run, ...)."""


class DeadlineExceeded(EzgraphError):
    """The error a run fails with when it is still going at its deadline (``submit(...,
    deadline=)`` or the graph's ``DEADLINE``); the watchdog writes it to the run."""


class StepBudgetExceeded(EzgraphError):
    """The error a run fails with when it would start more steps than its ``max_steps``
    (``submit(..., max_steps=)`` or the graph's ``MAX_STEPS``)."""


class StepError(EzgraphError):
    """Raised inside a step when a module's result breaks the contract (non-dict, bad route)."""


class ConnectionFailed(EzgraphError):
    """Raised when Redis or the database cannot be reached; names the URL without password."""


class UnsafeRedis(EzgraphError):
    """Raised when the Redis server is set up to lose data ezgraph keeps there (an eviction
    policy): workers refuse to start on it, ``ezgraph check`` names it."""


class StoreRefused(EzgraphError):
    """Raised when the database refuses the rows of a run (a value it cannot hold): the run is
    set aside with this reason while other runs are written (``ezgraph persist`` names it)."""


class SubmitInterrupted(ConnectionFailed):
    """Raised when Redis or the database failed part-way through a bulk submission:
    ``run_ids`` are the runs submitted (those of the first payloads, in order), ``unsure`` the
    runs of the next payloads, which may or may not have been; the rest were not."""

    def __init__(self, message: str, run_ids: list[str], unsure: list[str]) -> None:
        super().__init__(message)
        self.run_ids = run_ids
        self.unsure = unsure


class EmbeddedServerError(ConnectionFailed):
    """Raised when the embedded Redis-compatible server cannot be started."""


class RenderError(EzgraphError):
    """Raised when a graph cannot be drawn as an image (Graphviz missing or failing)."""
