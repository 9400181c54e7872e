"""r routes to x and/or y (and z); x, y join at j; z -> k."""

GRAPH_CONNECTIONS = {"r": ["x", "y", "z"], "x": ["j"], "y": ["j"], "z": ["k"], "j": [], "k": []}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}
MODULES["r"] = "tests.steps:route_by_field"
ROUTES = {"r": ["x", "y", "z"]}
