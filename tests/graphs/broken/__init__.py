"""Steps that break the module contract, selected by start node."""

GRAPH_CONNECTIONS = {"listy": ["after"], "weird": ["after"], "raises": ["after"], "after": []}
MODULES = {
    "listy": "tests.steps:not_a_dict",
    "weird": "tests.steps:unserializable",
    "raises": "tests.steps:fail",
    "after": "tests.steps:mark",
}
