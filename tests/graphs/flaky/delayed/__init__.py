"""a -> b, where a fails until the Redis key ``flaky:<run_id>`` exists and its one retry waits
a minute in RQ's scheduled registry (a step to cancel while it waits)."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.graphs.flaky.steps:flaky", "b": "tests.steps:mark"}
POLICIES = {"a": {"retries": 1, "retry_intervals": [60]}}
