"""a -> b, with a run's defaults: a deadline of 30 s and a budget of one step."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark"}
DEADLINE = 30
MAX_STEPS = 1
