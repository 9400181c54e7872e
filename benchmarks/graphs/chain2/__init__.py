"""The benchmark's chain2 graph, run by ezgraph: every node a trivial instrumented step."""

from benchmarks.harness import GRAPHS

GRAPH_CONNECTIONS = GRAPHS["chain2"]
MODULES = {node: "benchmarks.ezgraph_steps:step" for node in GRAPH_CONNECTIONS}
