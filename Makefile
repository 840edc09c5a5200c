# ledgerflow — `make demo` runs the stack, `make test` runs lint and every test.
# Both bootstrap what they need: a .venv with the package, and Kafka's jars in ~/.cache.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install kafka-jars lint format test test-unit demo schemas clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install ledgerflow with its dev tools

kafka-jars: $(STAMP) ## fetch Apache Kafka's broker jars from Maven Central into the cache
	$(BIN)/python -c "from streams.local_kafka import ensure_jars; print('kafka jars:', ensure_jars())"

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) kafka-jars lint ## lint, then the whole suite (starts its own Kafka)
	@# pytest exits 5 when a selection collects nothing: say so instead of failing make.
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

test-unit: $(STAMP) ## only the tests that need no broker
	$(BIN)/pytest -m "not integration and not chaos and not bench" $(PYTEST_ARGS)

demo: $(STAMP) kafka-jars ## local Kafka + worker + a scenario + a summary (Ctrl-C stops it)
	$(BIN)/ledgerflow dev

schemas: $(STAMP) ## regenerate canonical/schemas/*.schema.json
	$(BIN)/ledgerflow schemas

clean: ## remove local state (not the venv or the jar cache)
	rm -rf .ledgerflow-data .ledgerflow-dev .pytest_cache .mypy_cache .ruff_cache
