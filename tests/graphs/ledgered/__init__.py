"""s -> p0..p7 -> j where every step counts itself in a Redis ledger."""

PARALLEL = [f"p{i}" for i in range(8)]
GRAPH_CONNECTIONS = {"s": PARALLEL, **{p: ["j"] for p in PARALLEL}, "j": []}
MODULES = {node: "tests.steps:ledger" for node in GRAPH_CONNECTIONS}
