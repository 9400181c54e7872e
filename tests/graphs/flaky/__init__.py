"""s -> (steady, flaky) -> j, where flaky fails until the Redis key ``flaky:<run_id>`` exists.

Every step counts each execution in the payload's Redis ledger (``ledger_url``, ``ledger_key``).
The subpackages hold the other graphs of the cancel and retry tests.
"""

GRAPH_CONNECTIONS = {"s": ["steady", "flaky"], "steady": ["j"], "flaky": ["j"], "j": []}
MODULES = {
    "s": "tests.steps:ledger",
    "steady": "tests.steps:ledger",
    "flaky": "tests.graphs.flaky.steps:flaky",
    "j": "tests.steps:ledger",
}
