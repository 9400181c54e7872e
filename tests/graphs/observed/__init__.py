"""a -> b, each recording what RQ's storage holds for its job and worker while it runs; boom
fails (a run of its own, to end an execution by failure before b runs)."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": [], "boom": []}
MODULES = {"a": "tests.steps:observe_rq", "b": "tests.steps:observe_rq", "boom": "tests.steps:fail"}
