"""The graph ``ezgraph chaos`` audits: a 5-node fan-out and join whose steps leave side effects.

``start -> (left, middle, right) -> join``. Every execution is counted, and every step writes its
side effect to a ledger under its idempotency key, so a step that runs again after a crash must
not write twice.
"""

GRAPH_CONNECTIONS = {
    "start": ["left", "middle", "right"],
    "left": ["join"],
    "middle": ["join"],
    "right": ["join"],
    "join": [],
}
MODULES = {node: "ezgraph.chaos.graph.steps:work" for node in GRAPH_CONNECTIONS}
