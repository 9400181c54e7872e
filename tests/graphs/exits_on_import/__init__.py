"""A modules package that ends the process as it is imported."""

import sys

sys.exit(3)
