"""The benchmark's 100-node chain, run by ezgraph: every node a trivial instrumented step."""

from benchmarks.harness import GRAPHS

GRAPH_CONNECTIONS = GRAPHS["chain100"]
MODULES = {node: "benchmarks.ezgraph_steps:step" for node in GRAPH_CONNECTIONS}
