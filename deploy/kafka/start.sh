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

if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
  echo "127.0.0.1:$port"
  exit 0
fi
libs="$("$here/fetch.sh")"
cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=$client_listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$client_listeners
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$protocol_map
inter.broker.listener.name=$listener
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
auto.create.topics.enable=false
PROPS
format_args=()
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
java_opts=(-Xms256m "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.logs.dir=$dir")
if [[ ! -f "$dir/data/meta.properties" ]]; then
  cluster_id="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)"
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format --standalone \
      -t "$cluster_id" -c "$dir/server.properties" "${format_args[@]}" >"$dir/format.log" 2>&1 \
    || { echo "start.sh: formatting KRaft storage failed, see $dir/format.log" >&2; cat "$dir/format.log" >&2; exit 1; }
fi
nohup nice -n "${KAFKA_NICE:-0}" java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
  >"$dir/stdout.log" 2>&1 </dev/null &
echo $! >"$dir/pid"

for _ in $(seq 1 120); do
  if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "start.sh: the broker exited; last lines of $dir/server.log:" >&2
    tail -n 30 "$dir/server.log" "$dir/stdout.log" >&2 || true
    exit 1
  fi
  if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null \
     && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.5
done
echo "start.sh: the broker did not answer on 127.0.0.1:$port within 60 s; see $dir/server.log" >&2
exit 1
