"""ask -> gate (waits for signal "approval") and side; both join at j."""

GRAPH_CONNECTIONS = {"ask": ["gate", "side"], "gate": ["j"], "side": ["j"], "j": []}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}
MODULES["gate"] = "tests.steps:wait_for_approval"
