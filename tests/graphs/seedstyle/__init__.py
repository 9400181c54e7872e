"""The seed's way to write modules: ModuleWorker subclasses, one per module file."""

GRAPH_CONNECTIONS = {"shout": ["count_chars"], "count_chars": []}
