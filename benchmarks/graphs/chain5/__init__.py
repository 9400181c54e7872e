"""The benchmark's chain5 graph, run by ezgraph: every node a trivial instrumented step."""

from benchmarks.harness import GRAPHS

GRAPH_CONNECTIONS = GRAPHS["chain5"]
MODULES = {node: "benchmarks.ezgraph_steps:step" for node in GRAPH_CONNECTIONS}
