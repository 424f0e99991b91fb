# lstm-stream-worker: `make demo` shows it working, `make test` proves it. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help venv broker broker-stop lint test unit integration demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create .venv with the worker and its dev tools

broker: ## start the local Kafka (KRaft, loopback) in the background; prints its address
	@deploy/kafka/start.sh

broker-stop: ## stop the local Kafka (its data stays under .cache/)
	@deploy/kafka/stop.sh

lint: venv ## ruff (lint + format check) and mypy
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests
	$(BIN)/mypy

unit: venv ## unit tests only (no broker)
	$(BIN)/pytest tests/unit -q

integration: venv ## integration tests (start their own broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(BIN)/pytest tests/integration -q

test: venv lint ## everything CI runs: lint, unit and integration tests against a real broker
	deploy/kafka/fetch.sh >/dev/null
	$(BIN)/pytest tests -q

demo: venv ## broker, model, 100k events, two workers, verification; stops what it started
	deploy/demo.sh

clean: ## remove the virtual env and local broker data
	rm -rf $(VENV) .cache
