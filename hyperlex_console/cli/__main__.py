"""`python -m hyperlex_console.cli` runs the `hyperlex` command."""

from hyperlex_console.cli import main

main()
