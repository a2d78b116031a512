"""`hyperlex-console`: the Textual console's entry point."""

from __future__ import annotations

import sys


def main() -> None:
    """Start the console (not built yet in this version: say so and exit non-zero)."""
    sys.stderr.write("hyperlex-console: the console is not available in this version yet; "
                     "use `hyperlex chat --profile default` for now.\n")
    sys.exit(1)


if __name__ == "__main__":
    main()
