"""Invalid: 'a' asks for RQ 3's concurrency rate limit, which ezgraph's jobs do not carry."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark"}
POLICIES = {"a": {"rate_limit": {"key": "llm", "concurrency": 2}}}
