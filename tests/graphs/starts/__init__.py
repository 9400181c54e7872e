"""Declared starts: runs start at a only, so x and y never run and j runs without x."""

GRAPH_CONNECTIONS = {"a": ["j"], "x": ["j", "y"], "j": [], "y": []}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}
STARTS = ["a"]
