# commgraph build/test tooling (GNU make).

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
PYTEST_ARGS ?=
LINT_PATHS = src tests bench

# Debian packages needed by the project, installed by scripts/ensure-apt.
# mosquitto: the real broker the proxy tests run against; chromium: the dashboard's browser
# tests (Playwright drives Debian's build, it downloads none).
APT_PACKAGES ?= mosquitto chromium

.DEFAULT_GOAL := help

.PHONY: help setup apt-deps lint typecheck test demo bench format clean

help:
	@echo "commgraph make targets:"
	@echo "  setup      create $(VENV) and install -e '.[dev,eval]' (plus APT_PACKAGES via scripts/ensure-apt)"
	@echo "  lint       ruff check + ruff format --check on $(LINT_PATHS)"
	@echo "  typecheck  mypy (strict, on src/)"
	@echo "  test       setup, lint, typecheck, then pytest (PYTEST_ARGS=...)"
	@echo "  demo       run 'commgraph demo'"
	@echo "  bench      run every bench/*.py (each prints one JSON line)"
	@echo "  format     ruff format + ruff check --fix"
	@echo "  clean      remove $(VENV), caches, *.egg-info, build artefacts"

setup: $(STAMP)

# Always checked (cheap dpkg-query), before the venv is built.
apt-deps:
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then scripts/ensure-apt $(APT_PACKAGES); fi

# Rebuilt only when pyproject.toml or this file changes, so repeated `make test` is fast.
$(STAMP): pyproject.toml Makefile | apt-deps
	@if [ ! -x "$(BIN)/python" ]; then \
		echo "Creating virtualenv in $(VENV)"; \
		if ! $(PYTHON) -m venv "$(VENV)"; then \
			echo "venv creation failed; installing python3-venv and retrying" >&2; \
			rm -rf "$(VENV)"; \
			scripts/ensure-apt python3-venv && $(PYTHON) -m venv "$(VENV)"; \
		fi; \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,eval]'
	@touch $@

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/commgraph demo

bench: setup
	@set -e; \
	for f in bench/*.py; do \
		[ -e "$$f" ] || continue; \
		echo ">> $$f" >&2; \
		$(BIN)/python "$$f"; \
	done

format: setup
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

clean:
	rm -rf "$(VENV)" .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	rm -rf *.egg-info src/*.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
