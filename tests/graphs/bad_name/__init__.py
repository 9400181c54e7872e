"""Invalid: a node name that is not a Python identifier."""

GRAPH_CONNECTIONS = {"a": ["my-node"], "my-node": []}
MODULES = {"a": "tests.steps:mark"}
