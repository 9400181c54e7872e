"""The benchmark's fanin graph, run by ezgraph: every node a trivial instrumented step."""

from benchmarks.harness import GRAPHS

GRAPH_CONNECTIONS = GRAPHS["fanin"]
MODULES = {node: "benchmarks.ezgraph_steps:step" for node in GRAPH_CONNECTIONS}
