# The two commands of the README:
#   make serve   install into .venv and run the server on the embedded default
#   make test    install what the tests need and run every check (lint + tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: serve test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

serve: $(VENV)/.installed
	$(BIN)/datacoffer serve $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

test: lint
	./scripts/test-services.sh
	# one worker per core, each test file whole on one worker (its module fixtures, such as
	# its own server processes, are made once)
	$(BIN)/python -m pytest -n auto --dist loadfile $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m bench $(ARGS)
