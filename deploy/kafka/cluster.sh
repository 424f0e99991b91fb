#!/usr/bin/env bash
# Start a three-node KRaft Kafka cluster on loopback, in the background: every node a broker and
# a controller, the three a voter quorum, topics replicated three times with two in sync needed
# (the internal ones too), so a test can stop, kill or cut off one node and the cluster goes on.
# Same jars and node settings as start.sh (deploy/kafka/node.sh); plaintext only.
# Env: KAFKA_PORT (9092): node i's client port is KAFKA_PORT+i-1; KAFKA_CONTROLLER_PORT
# (KAFKA_PORT+200, clear of `make bench`'s broker): node i's is KAFKA_CONTROLLER_PORT+i-1;
# KAFKA_CLUSTER_DIR (.cache/cluster-$KAFKA_PORT under the repo): node i's data, logs and pid in
# node-$i; KAFKA_HEAP (384m per node, so three fit beside the worker and the tests); KAFKA_NICE (0);
# KAFKA_NODES ("1 2 3"): the nodes to start, e.g. "2" to bring back the one a test stopped (a
# node comes up only while two of the three controllers run: the quorum needs a majority).
# KAFKA_EXTERNAL_HOST with KAFKA_EXTERNAL_PORT: node i also listens on
# 127.0.0.1:(KAFKA_EXTERNAL_PORT+i-1) as EXTERNAL and advertises it as
# KAFKA_EXTERNAL_HOST:(KAFKA_EXTERNAL_PORT+i-1). A proxy bound on that address that forwards to
# the loopback one (tests/cluster/netfault.py) then carries all the traffic of a client that
# bootstraps through it, since it is told the proxied addresses; the nodes' own traffic stays
# on the loopback listener. Pass the same variables every run: a start rewrites the node's
# server.properties.
# Idempotent: nodes already running are left alone, the others start on their existing data
# (the cluster id and the initial voters are kept in KAFKA_CLUSTER_DIR/quorum). Prints the
# bootstrap list once the nodes started answer and, when all three run, a client sees the three.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/kafka/node.sh
source "$here/node.sh"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 200))}"
dir="${KAFKA_CLUSTER_DIR:-$repo/.cache/cluster-$port}"
nodes="${KAFKA_NODES:-1 2 3}"
external_host="${KAFKA_EXTERNAL_HOST:-}"
external_port="${KAFKA_EXTERNAL_PORT:-}"
export KAFKA_HEAP="${KAFKA_HEAP:-384m}"
if [[ "${KAFKA_SECURITY:-plaintext}" != plaintext ]]; then
  echo "cluster.sh: KAFKA_SECURITY=$KAFKA_SECURITY: the cluster is plaintext only (SASL: make broker)" >&2
  exit 1
fi
for i in $nodes; do
  [[ "$i" =~ ^[123]$ ]] || { echo "cluster.sh: KAFKA_NODES='$nodes': expected node ids among 1 2 3" >&2; exit 1; }
done
if [[ -n "$external_host" && ! "$external_port" =~ ^[0-9]+$ ]] || [[ -z "$external_host" && -n "$external_port" ]]; then
  echo "cluster.sh: set both KAFKA_EXTERNAL_HOST and KAFKA_EXTERNAL_PORT (a port number), or neither" >&2
  exit 1
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bootstrap="127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))"

# Kafka's form of a random UUID (StorageTool random-uuid without starting a JVM): 16 random
# bytes in URL-safe base64, never starting with '-' (a command-line flag to Kafka's tools)
random_uuid() {
  local uuid
  while :; do
    uuid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    [[ "$uuid" == -* ]] || break
  done
  echo "$uuid"
}

started=()
for i in $nodes; do kafka_running "$dir/node-$i" || started+=("$i"); done
if ((${#started[@]})); then
  libs="$("$here/fetch.sh")"
  if [[ ! -f "$dir/quorum" ]]; then
    # the cluster id and each node's metadata directory id, the same in every node's format
    {
      echo "cluster_id=$(random_uuid)"
      echo "initial_controllers=1@127.0.0.1:$cport:$(random_uuid),2@127.0.0.1:$((cport + 1)):$(random_uuid),3@127.0.0.1:$((cport + 2)):$(random_uuid)"
    } >"$dir/quorum.tmp"
    mv "$dir/quorum.tmp" "$dir/quorum"
  fi
  cluster_id="$(sed -n 's/^cluster_id=//p' "$dir/quorum")"
  initial_controllers="$(sed -n 's/^initial_controllers=//p' "$dir/quorum")"
  formats=()
  for i in "${started[@]}"; do
    node="$dir/node-$i"
    mkdir -p "$node/data"
    listeners="PLAINTEXT://127.0.0.1:$((port + i - 1))"
    advertised="$listeners"
    protocol_map="PLAINTEXT:PLAINTEXT"
    if [[ -n "$external_host" ]]; then
      listeners+=",EXTERNAL://127.0.0.1:$((external_port + i - 1))"
      advertised+=",EXTERNAL://$external_host:$((external_port + i - 1))"
      protocol_map+=",EXTERNAL:PLAINTEXT"
    fi
    kafka_properties "$i" "$node" "$listeners" "$advertised" "$protocol_map" PLAINTEXT \
      "controller.quorum.bootstrap.servers=127.0.0.1:$cport,127.0.0.1:$((cport + 1)),127.0.0.1:$((cport + 2))" \
      3 2 "$((cport + i - 1))" >"$node/server.properties"
    kafka_format "$libs" "$node" cluster.sh "$cluster_id" --initial-controllers "$initial_controllers" &
    formats+=($!)
  done
  for pid in "${formats[@]}"; do wait "$pid" || exit 1; done
  # launched together: a node's broker comes up only once the quorum has a leader
  for i in "${started[@]}"; do kafka_launch "$libs" "$dir/node-$i"; done
fi

# each node started answers, then (all three running) a client must see the three brokers
waiting=("${started[@]}")
for _ in $(seq 1 240); do
  ((${#waiting[@]})) || break
  left=()
  for i in "${waiting[@]}"; do
    kafka_started "$dir/node-$i" "$((port + i - 1))" cluster.sh || left+=("$i")
  done
  waiting=("${left[@]}")
  ((${#waiting[@]})) && sleep 0.5
done
if ((${#waiting[@]})); then
  echo "cluster.sh: node(s) ${waiting[*]} did not answer within 120 s; see $dir/node-*/server.log" >&2
  exit 1
fi
if ((${#started[@]})); then
  all=yes
  for i in 1 2 3; do kafka_running "$dir/node-$i" || all=no; done
  if [[ $all == yes ]] && ! java -XX:TieredStopAtLevel=1 -cp "$libs/*" "$here/AdminProbe.java" brokers "$bootstrap" 3 60 2>"$dir/probe.log"; then
    echo "cluster.sh: the nodes run but a client does not see three brokers:" >&2
    tail -n 5 "$dir/probe.log" >&2
    exit 1
  fi
fi
echo "$bootstrap"
