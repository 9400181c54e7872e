"""a -> b, where b kills its worker's process for a ``doomed`` payload."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:ledger", "b": "tests.steps:ledger_or_die"}
