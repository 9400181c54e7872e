"""a -> b -> c, each step sleeping the payload's ``sleep`` seconds and counting itself."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": ["c"], "c": []}
MODULES = {node: "tests.steps:slow_ledger" for node in GRAPH_CONNECTIONS}
