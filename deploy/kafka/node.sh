# shellcheck shell=bash
# Sourced by start.sh (one node) and cluster.sh (three): what a KRaft node (broker+controller) on
# loopback is made of, so both write the same server.properties and start, wait for and stop a
# node the same way. Each node lives in its own directory: server.properties, data/, server.log,
# stdout.log, format.log and pid.
kafka_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# kafka_properties ID DIR LISTENERS ADVERTISED PROTOCOL_MAP INTER_BROKER QUORUM REPLICAS MIN_ISR CPORT
# prints a node's server.properties. LISTENERS: the client listeners (the CONTROLLER listener on
# 127.0.0.1:CPORT is added); QUORUM: the controller.quorum.* line; REPLICAS and MIN_ISR: the
# default replication factor and min.insync.replicas, of the internal topics too.
kafka_properties() {
  local id="$1" dir="$2" listeners="$3" advertised="$4" protocol_map="$5" inter="$6" quorum="$7"
  local replicas="$8" min_isr="$9" cport="${10}"
  cat <<PROPS
process.roles=broker,controller
node.id=$id
$quorum
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$protocol_map
inter.broker.listener.name=$inter
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
auto.create.topics.enable=false
PROPS
}

# kafka_java_opts DIR: the node's JVM options into the array `java_opts`
kafka_java_opts() {
  java_opts=(-Xms256m "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$kafka_here/log4j2.properties" "-Dkafka.logs.dir=$1")
}

# kafka_alive PID: whether the process runs (a killed one stays a zombie until its parent, init
# here, reaps it, and `kill -0` still reaches a zombie)
kafka_alive() {
  local state
  state="$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# kafka_running DIR: whether the node's recorded process is alive and is that node (not a
# process that got the pid of one gone)
kafka_running() {
  local pid
  [[ -f "$1/pid" ]] || return 1
  pid="$(cat "$1/pid")"
  kafka_alive "$pid" && grep -qF "$1/server.properties" "/proc/$pid/cmdline" 2>/dev/null
}

# kafka_format LIBS DIR NAME CLUSTER_ID ARGS...: format the node's storage unless it is already,
# ARGS being StorageTool's (--standalone, --initial-controllers ..., --add-scram ...)
kafka_format() {
  local libs="$1" dir="$2" name="$3" cluster_id="$4"
  shift 4
  [[ -f "$dir/data/meta.properties" ]] && return 0
  kafka_java_opts "$dir"
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 \
    || { echo "$name: formatting KRaft storage failed, see $dir/format.log" >&2; cat "$dir/format.log" >&2; return 1; }
}

# kafka_launch LIBS DIR: start the node in the background, recording its pid and where its log
# stood (kafka_started reads only what this run logs: server.log is appended to across restarts)
kafka_launch() {
  local libs="$1" dir="$2"
  kafka_java_opts "$dir"
  stat -c %s "$dir/server.log" 2>/dev/null >"$dir/log-offset" || echo 0 >"$dir/log-offset"
  nohup nice -n "${KAFKA_NICE:-0}" java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

# kafka_started DIR PORT NAME: 0 once the launched node logged "Kafka Server started" and
# accepts connections on PORT, 1 while it is on its way; exits 1 when its process is gone
kafka_started() {
  local dir="$1" port="$2" name="$3"
  if ! kafka_running "$dir"; then
    echo "$name: the broker in $dir exited; last lines of its logs:" >&2
    tail -n 30 "$dir/server.log" "$dir/stdout.log" >&2 || true
    exit 1
  fi
  grep -q "Kafka Server started" < <(tail -c +"$(($(cat "$dir/log-offset" 2>/dev/null || echo 0) + 1))" \
      "$dir/server.log" 2>/dev/null) \
    && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# kafka_stop NAME DIR...: SIGTERM to every running node named (together, so a cluster's
# controllers keep their quorum while its brokers shut down), SIGKILL to any still up after
# KAFKA_STOP_TIMEOUT seconds (30); their data stays
kafka_stop() {
  local name="$1" dir pid pids=() waited=0 bound="${KAFKA_STOP_TIMEOUT:-30}"
  shift
  for dir in "$@"; do
    if kafka_running "$dir"; then
      pid="$(cat "$dir/pid")"
      kill "$pid" && pids+=("$pid")
    fi
  done
  while ((${#pids[@]})); do
    local alive=()
    for pid in "${pids[@]}"; do kafka_alive "$pid" && alive+=("$pid"); done
    pids=("${alive[@]}")
    ((${#pids[@]})) || break
    if ((waited >= bound * 2)); then
      echo "$name: still running after ${bound} s, killing ${pids[*]}" >&2
      kill -9 "${pids[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  for dir in "$@"; do rm -f "$dir/pid"; done
}
