"""s -> p0..p7 -> j: the 1 -> 8 -> 1 fan-out and fan-in."""

PARALLEL = [f"p{i}" for i in range(8)]
GRAPH_CONNECTIONS = {"s": PARALLEL, **{p: ["j"] for p in PARALLEL}, "j": []}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}
