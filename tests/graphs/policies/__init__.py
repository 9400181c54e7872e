"""Per-node policies: a flaky step with retries, a hanging step with a short timeout."""

GRAPH_CONNECTIONS = {"flaky": ["after"], "quick_retry": ["after"], "hangs": ["after"], "after": []}
MODULES = {
    "flaky": "tests.steps:fail_until_attempt",
    "quick_retry": "tests.steps:fail_until_attempt",
    "hangs": "tests.steps:hang",
    "after": "tests.steps:mark",
}
POLICIES = {
    "flaky": {"retries": 2, "retry_intervals": [1]},
    "quick_retry": {"retries": 1},
    "hangs": {"timeout": 1},
}
