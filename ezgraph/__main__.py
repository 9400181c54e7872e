"""``python -m ezgraph``: the same as the ``ezgraph`` command."""

from .cli import main

main()
