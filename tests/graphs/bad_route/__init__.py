"""Invalid: ROUTES lets 'a' route to 'c', which is not one of its successors."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": ["c"], "c": []}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark", "c": "tests.steps:mark"}
ROUTES = {"a": ["b", "c"]}
