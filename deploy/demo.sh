#!/usr/bin/env bash
# `make demo`: local broker, reference model, two workers in one group, events, verification.
# Env: DEMO_KEYS (500), DEMO_EVENTS (100 per key), DEMO_RATE (events/s, 5000), DEMO_PARTITIONS (4),
#      KAFKA_PORT (9092). Stops what it started (the broker only if it was not already running).
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${DEMO_KEYS:-500}" events="${DEMO_EVENTS:-100}" rate="${DEMO_RATE:-5000}" parts="${DEMO_PARTITIONS:-4}"
port="${KAFKA_PORT:-9092}"
work=".cache/demo" && mkdir -p "$work"
bin=".venv/bin/lstm-worker"
export TF_CPP_MIN_LOG_LEVEL=2

broker_was_up=no
[[ -f ".cache/kafka-$port/pid" ]] && kill -0 "$(cat ".cache/kafka-$port/pid")" 2>/dev/null && broker_was_up=yes
bootstrap="$(deploy/kafka/start.sh)"
echo "== broker: $bootstrap"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ $broker_was_up == yes ]] || deploy/kafka/stop.sh >/dev/null
}
trap cleanup EXIT

run="$(date +%s)"
input="demo-events-$run" output="demo-predictions-$run"
$bin make-model --out "$work/model.keras" 2>/dev/null | sed 's/^/== /'
.venv/bin/python - "$bootstrap" "$input" "$parts" <<'PY'
import sys
from confluent_kafka.admin import AdminClient
from worker.kafka.topics import create_topic
create_topic(AdminClient({"bootstrap.servers": sys.argv[1]}), sys.argv[2], int(sys.argv[3]))
PY
echo "== topics: input=$input ($parts partitions) output=$output state=$input.state dlq=$input.dlq"

for i in 0 1; do
  $bin run --bootstrap-servers "$bootstrap" --model "$work/model.keras" --input-topic "$input" \
    --output-topic "$output" --group-id "demo-$run" --metrics-host 127.0.0.1 --metrics-port "910$i" \
    >"$work/worker-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1; do
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:910$i/healthz" >/dev/null 2>&1 && break
    kill -0 "${pids[$i]}" || { echo "worker $i exited:"; tail -20 "$work/worker-$i.log"; exit 1; }
    sleep 0.5
  done
done
for _ in $(seq 1 240); do  # both ready, each with partitions, all partitions assigned
  assigned=0
  for i in 0 1; do
    curl -sf "http://127.0.0.1:910$i/readyz" >/dev/null 2>&1 || { assigned=-1; break; }
    n=$(curl -s "http://127.0.0.1:910$i/metrics" | awk '/^lstm_worker_assigned_partitions / {print int($2)}')
    ((${n:-0} > 0)) || { assigned=-1; break; }
    assigned=$((assigned + n))
  done
  ((assigned == parts)) && break
  sleep 0.5
done
echo "== two workers running in group demo-$run; metrics: http://127.0.0.1:9100/metrics http://127.0.0.1:9101/metrics"

$bin produce --bootstrap-servers "$bootstrap" --topic "$input" --keys "$keys" --events-per-key "$events" \
  --rate "$rate" 2>/dev/null | sed 's/^/== /'
total=$((keys * events))
for _ in $(seq 1 600); do  # until the group has predicted every event (or 5 minutes)
  done_count=0
  for i in 0 1; do
    n=$(curl -s "http://127.0.0.1:910$i/metrics" | awk '/^lstm_worker_predictions_total / {print int($2)}')
    done_count=$((done_count + ${n:-0}))
  done
  ((done_count >= total)) && break
  sleep 0.5
done
echo "== verifying every prediction against the model on the full history (one call per prefix length)..."
$bin verify --bootstrap-servers "$bootstrap" --model "$work/model.keras" --input-topic "$input" \
  --output-topic "$output" 2>/dev/null
for i in 0 1; do
  printf '== worker %s: ' "$i"
  curl -s "http://127.0.0.1:910$i/metrics" | awk '
    /^lstm_worker_events_total\{result="predicted"\}/ {p=$2}
    /^lstm_worker_assigned_partitions / {a=$2}
    /^lstm_worker_round_keys_sum / {ks=$2} /^lstm_worker_round_keys_count / {kc=$2}
    END {printf "predicted=%d partitions=%d mean_round_keys=%.1f\n", p, a, (kc ? ks/kc : 0)}'
done
