"""What a module may use to steer its run: :class:`Route`, :class:`Map`, :class:`Wait` and its
step context.

A module never has to import ezgraph: a plain ``dict`` returned from ``process(data)`` goes on
to every declared successor. It imports this only to choose successors, to fan out over a list
it computed, to pause its run until a signal comes (:class:`Wait`), to read who it is (run id,
attempt, idempotency key, upstream outputs), or to report its progress and events to whoever
follows the run (:meth:`StepContext.progress`, :meth:`StepContext.emit`).
"""

from __future__ import annotations

import contextvars
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import PayloadError, StepError
from .step_job import step_name

# Where a step's events go: the runtime appends them to the run's stream (a step context built
# without one, as in a test calling a module directly, drops them).
EventSink = Callable[[dict[str, Any]], None]
# Keys of an event that ezgraph sets; "step" and "progress" are ezgraph's own event types.
EVENT_KEYS = ("step", "at", "id")
EVENT_TYPES = ("step", "progress")


@dataclass(frozen=True)
class Route:
    """Send this step's output only to ``to`` (a subset of the node's declared successors).

    Successors not chosen are marked ``skipped``, and so, transitively, is everything that can
    only be reached through them.
    """

    to: tuple[str, ...]
    output: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, to: str | Iterable[str], output: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "to", (to,) if isinstance(to, str) else tuple(to))
        object.__setattr__(self, "output", {} if output is None else output)


@dataclass(frozen=True)
class Map:
    """Run successor ``node`` once per item of ``items``; the node after it gets them in order.

    Each instance receives this step's state plus ``{key: item}``; the join after the mapped
    node receives ``{node: [output_0, output_1, ...]}`` in item order. An empty list goes
    straight on to that join. The other successors of this step get ``output`` as usual.
    """

    node: str
    items: tuple[Any, ...]
    output: Mapping[str, Any] = field(default_factory=dict)
    key: str = "item"

    def __init__(
        self,
        node: str,
        items: Iterable[Any],
        output: Mapping[str, Any] | None = None,
        key: str = "item",
    ) -> None:
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "items", tuple(items))
        object.__setattr__(self, "output", {} if output is None else output)
        object.__setattr__(self, "key", key)


@dataclass(frozen=True)
class Wait:
    """Pause the run here until signal ``name`` comes (``GraphOrchestrator().signal``,
    ``ezgraph signal``); no worker is held meanwhile.

    The step is ``waiting``; the signal finishes it, and its successors receive ``output`` plus
    ``{name: <the signal's data>}``. A signal sent before is kept and ends the wait at once.
    Past ``timeout`` seconds (None: no limit) without it, the step and its run fail.
    """

    name: str
    output: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    def __init__(
        self, name: str, output: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "output", {} if output is None else output)
        object.__setattr__(self, "timeout", timeout)


@dataclass(frozen=True)
class StepContext:
    """Who the running step is; read it with :func:`current_step`.

    ``idempotency_key`` is the same for every attempt of one step of one run: use it to make a
    side effect (a row, an e-mail, a payment) happen once even when the step runs again.
    ``outputs`` maps each upstream node of a join to its own output (a list for a mapped node).
    ``successors`` are the node's successors in the graph the step runs in: a module that routes
    chooses among them (so it works in any graph that holds it).
    """

    run_id: str
    node: str
    index: int | None
    attempt: int
    database_url: str = field(repr=False)  # its password must reach no log
    outputs: Mapping[str, Any] = field(default_factory=dict)
    successors: tuple[str, ...] = ()
    events: EventSink | None = field(default=None, repr=False, compare=False)

    @property
    def step(self) -> str:
        """The step's name within its run: ``node``, or ``node-<index>`` for a mapped instance."""
        return step_name(self.node, self.index)

    @property
    def idempotency_key(self) -> str:
        """A key unique to this step of this run, stable across attempts."""
        return f"{self.run_id}:{self.step}"

    def progress(self, done: float, total: float, message: str | None = None) -> None:
        """Report how far the step got (``done`` of ``total``) to whoever follows the run
        (``GraphOrchestrator().events``, ``ezgraph status --follow``, the dashboard).

        Raises:
            PayloadError: when ``done`` or ``total`` is not a number, or ``message`` not text.
        """
        for name, value in (("done", done), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise PayloadError(f"progress(): {name} must be a number, not {value!r}")
        if message is not None and not isinstance(message, str):
            raise PayloadError(f"progress(): message must be text, not {message!r}")
        self._send({"type": "progress", "done": done, "total": total, "message": message})

    def emit(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` (a JSON object) to the run's events; its ``type`` is ``"event"``
        unless it names one. ezgraph adds ``step`` and ``at`` (and ``id`` when read).

        Raises:
            PayloadError: for an event that is not a JSON object, sets ``step``, ``at`` or
                ``id``, or takes ezgraph's own types ``step`` or ``progress``.
        """
        if not isinstance(event, Mapping):
            raise PayloadError(f"emit() takes a dict, not {type(event).__name__}")
        taken = [key for key in EVENT_KEYS if key in event]
        if taken:
            raise PayloadError(f"emit(): ezgraph sets {', '.join(map(repr, taken))} itself")
        kind = event.get("type", "event")
        if kind in EVENT_TYPES:
            raise PayloadError(f"emit(): type {kind!r} is ezgraph's own; use progress() or another")
        self._send({**event, "type": kind})

    def _send(self, event: dict[str, Any]) -> None:
        if self.events is not None:
            self.events({**event, "step": self.step})


_current: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "ezgraph_step", default=None
)


def current_step() -> StepContext:
    """Return the context of the step running in this process.

    Raises:
        StepError: when called outside a step.
    """
    context = _current.get()
    if context is None:
        raise StepError("current_step() called outside an ezgraph step")
    return context


def set_current_step(context: StepContext | None) -> contextvars.Token[StepContext | None]:
    """Install ``context`` as the running step (used by the step wrapper and tests)."""
    return _current.set(context)


def reset_current_step(token: contextvars.Token[StepContext | None]) -> None:
    """Undo :func:`set_current_step`."""
    _current.reset(token)
