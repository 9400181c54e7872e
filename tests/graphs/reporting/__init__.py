"""work -> done: ``work`` reports its progress and an event of its own."""

GRAPH_CONNECTIONS = {"work": ["done"], "done": []}
MODULES = {"work": "tests.steps:report", "done": "tests.steps:mark"}
