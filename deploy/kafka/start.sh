#!/usr/bin/env bash
# Start a single-node KRaft Kafka (broker+controller) on loopback, in the background.
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_DIR (data, log, pid;
# default .cache/kafka-$KAFKA_PORT under the repo), KAFKA_HEAP (512m), KAFKA_NICE (0: the broker's
# CPU priority; `make bench` runs its broker at 10, below the worker under test).
# KAFKA_SECURITY=sasl (default plaintext): clients connect with SASL_PLAINTEXT (PLAIN or
# SCRAM-SHA-512) and ACLs are enforced; with KAFKA_SSL_PORT also with SASL_SSL on that port.
# Users, passwords and the TLS certificate: see deploy/kafka/sasl.sh.
# Reuses an existing data directory, so a stopped broker restarts with its topics.
# Prints the bootstrap address once the broker answers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/kafka/node.sh
source "$here/node.sh"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
dir="${KAFKA_DIR:-$repo/.cache/kafka-$port}"
mkdir -p "$dir/data"
dir="$(cd "$dir" && pwd)"
security="${KAFKA_SECURITY:-plaintext}"
case "$security" in
  plaintext) listener=PLAINTEXT ;;
  sasl) listener=SASL_PLAINTEXT ;;
  *) echo "start.sh: KAFKA_SECURITY=$security: expected plaintext or sasl" >&2; exit 1 ;;
esac
client_listeners="$listener://127.0.0.1:$port"
protocol_map="$listener:$listener"
if [[ "$security" == sasl && -n "${KAFKA_SSL_PORT:-}" ]]; then
  client_listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SSL_PORT"
  protocol_map+=",SASL_SSL:SASL_SSL"
fi

if kafka_running "$dir"; then
  echo "127.0.0.1:$port"
  exit 0
fi
libs="$("$here/fetch.sh")"
kafka_properties 1 "$dir" "$client_listeners" "$client_listeners" "$protocol_map" "$listener" \
  "controller.quorum.bootstrap.servers=127.0.0.1:$cport" 1 1 "$cport" >"$dir/server.properties"
format_args=(--standalone)
if [[ "$security" == sasl ]]; then
  # shellcheck source=deploy/kafka/sasl.sh
  source "$here/sasl.sh"
  if [[ -n "${KAFKA_SSL_PORT:-}" ]]; then
    sasl_properties sasl_plaintext sasl_ssl >>"$dir/server.properties"
    tls_properties "$dir/tls" >>"$dir/server.properties"
  else
    sasl_properties sasl_plaintext >>"$dir/server.properties"
  fi
  for credential in $(scram_credentials); do format_args+=(--add-scram "$credential"); done
fi
if [[ ! -f "$dir/data/meta.properties" ]]; then
  kafka_format "$libs" "$dir" start.sh "$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
    "${format_args[@]}" || exit 1
fi
kafka_launch "$libs" "$dir"

for _ in $(seq 1 120); do
  if kafka_started "$dir" "$port" start.sh; then
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.5
done
echo "start.sh: the broker did not answer on 127.0.0.1:$port within 60 s; see $dir/server.log" >&2
exit 1
