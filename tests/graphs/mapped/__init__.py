"""m maps square over items; collect joins them in order."""

GRAPH_CONNECTIONS = {"m": ["square"], "square": ["collect"], "collect": []}
MODULES = {
    "m": "tests.steps:map_items",
    "square": "tests.steps:square",
    "collect": "tests.steps:collect",
}
