"""a -> (b, c) -> d, where c always fails; b is slow so it ends after c."""

GRAPH_CONNECTIONS = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
MODULES = {
    "a": "tests.steps:mark",
    "b": "tests.steps:mark",
    "c": "tests.steps:fail",
    "d": "tests.steps:mark",
}
