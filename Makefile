# Everyday commands. `make test` is the README's test command.
.PHONY: install test test-fast lint bench

install:
	./install.sh --dev

test:
	.venv/bin/python -m pytest -m "not gpu and not soak"

test-fast:
	.venv/bin/python -m pytest -m "not gpu and not slow and not e2e"

lint:
	.venv/bin/ruff check .
	.venv/bin/lint-imports

bench:
	for b in bench/*.py; do .venv/bin/python $$b || exit 1; done
