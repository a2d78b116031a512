"""`hyperlexd`: the daemon's entry point."""

from __future__ import annotations

import sys


def main() -> None:
    """Start the daemon (not built yet in this version: say so and exit non-zero)."""
    sys.stderr.write("hyperlexd: the daemon is not available in this version yet; "
                     "use `hyperlex chat` for now.\n")
    sys.exit(1)


if __name__ == "__main__":
    main()
