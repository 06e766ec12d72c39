# make setup: install everything (root). make run: the daemon on the default config. make test: the suite.
SHELL := /bin/bash
VENV := .venv
RAVN := $(VENV)/bin/ravn
CONFIG ?= config/ravn.yaml
PYTEST_ARGS ?=

.PHONY: setup run test lint bench clean

setup:
	bash scripts/setup.sh

run: setup
	$(RAVN) --config $(CONFIG)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy ravn_core plugins/*/src
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy ravn_core plugins/*/src

clean:
	rm -rf $(VENV)
