# lstm-stream-worker: `make demo` shows it working, `make test` proves it. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
export KAFKA_PORT
# apt-get needs root: CI runs as root, a developer's machine may need sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv peer tools broker broker-stop cluster cluster-stop registry registry-stop lint test unit integration demo bench fuzz rules clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,demo]'
	@touch $@

venv: $(VENV)/.installed ## create .venv with the worker, its dev tools and the demo's plotting

# The benchmark's Quix Streams peer (bench/peer.py) in a venv of its own: quixstreams pins a
# confluent-kafka older than the worker's. From PyPI only: bench/peer-requirements.txt.
PEER_VENV := .cache/peer-venv
$(PEER_VENV)/.installed: bench/peer-requirements.txt
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q --upgrade pip
	$(PEER_VENV)/bin/pip install -q -r bench/peer-requirements.txt
	@touch $@

peer: $(PEER_VENV)/.installed ## create .cache/peer-venv with Quix Streams for the benchmark's peer

tools: ## install what the tests run besides Python: promtool and prometheus, nft for the network faults, kcat (Debian's)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v nft >/dev/null && command -v kcat >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus nftables kcat >/dev/null; }
	@promtool --version 2>&1 | head -1

broker: ## start the local Kafka (KRaft, loopback) in the background; prints its address
	@deploy/kafka/start.sh

broker-stop: ## stop the local Kafka (its data stays under .cache/)
	@deploy/kafka/stop.sh

cluster: ## start a three-node Kafka cluster (KRaft, loopback, RF 3) in the background; prints its addresses
	@deploy/kafka/cluster.sh

cluster-stop: ## stop the three-node cluster (its data stays under .cache/)
	@deploy/kafka/cluster-stop.sh

REGISTRY_PORT ?= 8081
export REGISTRY_PORT
registry: ## start the Schema Registry (Apicurio, in memory, loopback) in the background on REGISTRY_PORT; prints its URL
	@deploy/registry/start.sh

registry-stop: ## stop the Schema Registry (its schemas are in memory: gone with it)
	@deploy/registry/stop.sh

lint: venv ## ruff (lint + format check) and mypy
	$(BIN)/ruff check worker bench tests
	$(BIN)/ruff format --check worker bench tests
	$(BIN)/mypy

unit: venv tools ## unit tests only (no broker; includes the deployment checks and the benchmark's)
	$(BIN)/pytest tests/unit tests/deploy tests/bench -q

integration: venv peer tools ## integration tests (start their own broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(BIN)/pytest tests/integration -q

test: venv peer tools lint ## everything CI runs: lint, unit and integration tests against a real broker
	deploy/kafka/fetch.sh >/dev/null
	deploy/toxiproxy/fetch.sh >/dev/null
	deploy/registry/fetch.sh >/dev/null
	$(BIN)/pytest tests -q --durations=20

demo: venv ## broker, model, two workers, 50k events with a live progress line, verification, PNG plot
	deploy/demo.sh

# `make bench`: its own broker on BENCH_KAFKA_PORT and Schema Registry (part 3's Avro drain) on
# BENCH_REGISTRY_PORT, each stopped after unless it was running, both at nice BENCH_NICE like the
# load generator, below the worker under test; BENCH_ARGS for reduced sizes, e.g.
# BENCH_ARGS="--drain-events 100000 --state-keys 100000 --latency-seconds 20"
BENCH_KAFKA_PORT ?= 9192
BENCH_REGISTRY_PORT ?= 8182
BENCH_NICE ?= 10
bench: venv peer ## kernel, drain (msgpack, JSON, Avro, the Quix Streams peer), latency (and the peer's), state and scaling on a local broker (python -m bench) into BENCHMARKS.md (~20 min)
	@deploy/kafka/fetch.sh >/dev/null
	@deploy/registry/fetch.sh >/dev/null
	@kport=$(BENCH_KAFKA_PORT); rport=$(BENCH_REGISTRY_PORT); pid=".cache/kafka-$$kport/pid"; \
	running() { [[ -f $$1 ]] && kill -0 "$$(cat "$$1")" 2>/dev/null; }; \
	stop_broker=yes; stop_registry=yes; \
	if running "$$pid"; then stop_broker=no; fi; \
	if running ".cache/registry-$$rport/pid"; then stop_registry=no; fi; \
	stop() { \
	  if [[ $$stop_broker == yes ]]; then KAFKA_PORT=$$kport deploy/kafka/stop.sh >/dev/null; fi; \
	  if [[ $$stop_registry == yes ]]; then REGISTRY_PORT=$$rport deploy/registry/stop.sh >/dev/null; fi; }; \
	trap stop EXIT; \
	registry="$$(REGISTRY_PORT=$$rport REGISTRY_NICE=$(BENCH_NICE) deploy/registry/start.sh)" || exit 1; \
	bootstrap="$$(KAFKA_PORT=$$kport KAFKA_NICE=$(BENCH_NICE) deploy/kafka/start.sh)" || exit 1; \
	echo "== broker: $$bootstrap; schema registry: $$registry"; \
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -W ignore -m bench --out BENCHMARKS.md \
	  --bootstrap-servers "$$bootstrap" --broker-pid "$$(cat $$pid)" --load-nice $(BENCH_NICE) \
	  --schema-registry-url "$$registry" $(BENCH_ARGS)

FUZZ_SECONDS ?= 300
fuzz: venv ## fuzz the wire-format decoders with atheris for FUZZ_SECONDS (300)
	$(BIN)/python tests/fuzz/fuzz_codec.py -max_total_time=$(FUZZ_SECONDS) -max_len=65536

rules: ## regenerate deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/alerts.yml
	@{ printf '%s\n' "# Generated from deploy/prometheus/alerts.yml by \`make rules\`: edit that file, then run it." \
	    "# The Prometheus Operator loads PrometheusRules that match its ruleSelector (kube-prometheus-stack:" \
	    "# the label release=<its release name>); add that label here if yours needs it." \
	    "apiVersion: monitoring.coreos.com/v1" "kind: PrometheusRule" "metadata:" "  name: lstm-worker" "  labels:" \
	    "    app.kubernetes.io/name: lstm-worker" "spec:"; \
	  grep -v '^#' deploy/prometheus/alerts.yml | sed 's/^\(.\)/  \1/'; } > deploy/kubernetes/prometheusrule.yaml

clean: ## remove the virtual env and local broker data
	rm -rf $(VENV) .cache
