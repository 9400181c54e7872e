"""One node whose module takes 4.5 s to import (heavy imports, paid again in every forked
work-horse of a stock rq worker)."""

GRAPH_CONNECTIONS = {"heavy": []}
