"""a -> b, where a sleeps the payload's ``sleep`` seconds (a step to stop while it runs)."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:slow", "b": "tests.steps:mark"}
