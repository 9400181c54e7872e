"""The scale benchmark's map: split maps item over range(n); gather joins the outputs."""

GRAPH_CONNECTIONS = {"split": ["item"], "item": ["gather"], "gather": []}
MODULES = {node: f"benchmarks.graphs.mapwide.steps:{node}" for node in GRAPH_CONNECTIONS}
