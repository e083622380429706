"""``python -m benchmarks``: run every benchmark, print the table, write ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
