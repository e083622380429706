"""``python -m openclaw_http_compat``: the reference gateway's command line.

See :mod:`openclaw_http_compat.reference.cli` for the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    # Imported here so that importing the package never pulls in the reference gateway.
    from .reference.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
