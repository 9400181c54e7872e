"""m maps square over items, where the items in ``flaky_items`` fail until the Redis key
``flaky:<run_id>`` exists; collect joins them in order."""

GRAPH_CONNECTIONS = {"m": ["square"], "square": ["collect"], "collect": []}
MODULES = {
    "m": "tests.steps:map_items",
    "square": "tests.graphs.flaky.steps:flaky_square",
    "collect": "tests.steps:collect",
}
