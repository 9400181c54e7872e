"""work -> done: ``work`` reports its progress and an event of its own; ``misreport`` emits
an event that sets a key ezgraph sets itself (its step fails)."""

GRAPH_CONNECTIONS = {"work": ["done"], "misreport": ["done"], "done": []}
MODULES = {
    "work": "tests.steps:report",
    "misreport": "tests.steps:misreport",
    "done": "tests.steps:mark",
}
