# ledgerflow — `make demo` runs the stack, `make test` runs lint and every test.
# Both bootstrap what they need: a .venv with the package, and Kafka's jars in ~/.cache.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# kustomize renders k8s/overlays in tests/k8s; `go install` takes it from the Go module proxy.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE := $(or $(LEDGERFLOW_CACHE_DIR),$(HOME)/.cache/ledgerflow)/kustomize-$(KUSTOMIZE_VERSION)/kustomize
# stripe-mock checks the Stripe client's request shapes (tests/connectors/stripe/test_stripe_mock.py);
# v0.203.0 speaks API 2026-08-26.dahlia, our pinned LEDGERFLOW_STRIPE_API_VERSION default.
STRIPE_MOCK_VERSION := v0.203.0
STRIPE_MOCK := $(or $(LEDGERFLOW_CACHE_DIR),$(HOME)/.cache/ledgerflow)/stripe-mock-$(STRIPE_MOCK_VERSION)/stripe-mock

.DEFAULT_GOAL := help
.PHONY: help install kafka-jars tools kustomize stripe-mock lint format test test-unit demo schemas protos clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install ledgerflow with its dev tools

kafka-jars: $(STAMP) ## fetch Apache Kafka's broker jars from Maven Central into the cache
	$(BIN)/python -c "from streams.cli.local_kafka import ensure_jars; print('kafka jars:', ensure_jars())"

tools: ## Debian's prometheus/promtool (metrics tests) and chromium (ops page test); tests skip without
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt() { if [ "$$(id -u)" = 0 ]; then apt-get "$$@"; else sudo -n apt-get "$$@"; fi; }; \
	  apt install -y -o DPkg::Lock::Timeout=300 prometheus \
	  || { apt update && apt install -y -o DPkg::Lock::Timeout=300 prometheus; } \
	  || echo "make tools: could not install prometheus; the Prometheus tests will be skipped"; }
	@command -v chromium >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt() { if [ "$$(id -u)" = 0 ]; then apt-get "$$@"; else sudo -n apt-get "$$@"; fi; }; \
	  apt install -y -o DPkg::Lock::Timeout=300 chromium \
	  || { apt update && apt install -y -o DPkg::Lock::Timeout=300 chromium; } \
	  || echo "make tools: could not install chromium; the ops page browser test will be skipped"; }

kustomize: ## kustomize from the Go module proxy into the cache (k8s tests skip without it)
	@test -x $(KUSTOMIZE) || GOBIN=$(dir $(KUSTOMIZE)) GOTOOLCHAIN=local \
	  go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) \
	  || echo "make kustomize: could not install kustomize; the k8s manifest tests will be skipped"

stripe-mock: ## stripe-mock from the Go module proxy into the cache (its tests skip without it)
	@test -x $(STRIPE_MOCK) || GOBIN=$(dir $(STRIPE_MOCK)) GOTOOLCHAIN=local \
	  go install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION) \
	  || echo "make stripe-mock: could not install stripe-mock; the stripe-mock tests will be skipped"

protos: $(STAMP) ## regenerate the Salesforce Pub/Sub API stubs from the vendored pubsub_api.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
	  connectors/salesforce/pubsub/pubsub_api.proto

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) kafka-jars tools kustomize stripe-mock lint ## lint, then the whole suite (starts its own Kafka)
	@# pytest exits 5 when a selection collects nothing: say so instead of failing make.
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

test-unit: $(STAMP) ## only the tests that need no broker
	$(BIN)/pytest -m "not integration and not chaos and not bench" $(PYTEST_ARGS)

demo: $(STAMP) kafka-jars ## local Kafka + worker + a scenario + a summary (Ctrl-C stops it); DEMO_ARGS="--salesforce-events 500" adds CDC via the Pub/Sub stand-in
	$(BIN)/ledgerflow dev $(DEMO_ARGS)

schemas: $(STAMP) ## regenerate canonical/schemas/*.schema.json
	$(BIN)/ledgerflow schemas

clean: ## remove local state (not the venv or the jar cache)
	rm -rf .ledgerflow-data .ledgerflow-dev .pytest_cache .mypy_cache .ruff_cache
