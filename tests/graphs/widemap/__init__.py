"""split maps item over range(n) (a no-op per item); gather joins them, counting itself."""

GRAPH_CONNECTIONS = {"split": ["item"], "item": ["gather"], "gather": []}
MODULES = {
    "split": "tests.steps:map_range",
    "item": "tests.steps:echo_item",
    "gather": "tests.steps:gather_counted",
}
