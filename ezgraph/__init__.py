"""ezgraph: run a graph of plain Python modules over RQ queues, every run kept in SQL."""

from __future__ import annotations

from .control import Map, Route, StepContext, current_step
from .errors import (
    ConnectionFailed,
    EzgraphError,
    GraphError,
    InvalidRunOperation,
    PayloadError,
    RunNotFound,
    StepError,
    UsageError,
)
from .settings import Settings

__all__ = [
    "ConnectionFailed",
    "EzgraphError",
    "GraphError",
    "InvalidRunOperation",
    "Map",
    "PayloadError",
    "Route",
    "RunNotFound",
    "Settings",
    "StepContext",
    "StepError",
    "UsageError",
    "current_step",
]
