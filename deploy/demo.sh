#!/usr/bin/env bash
# `make demo`: local broker, reference model, two workers in one group, events with a live status
# line, verification of every prediction, and a PNG plot of streaming vs full-history predictions.
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

total=$((keys * events))
$bin produce --bootstrap-servers "$bootstrap" --topic "$input" --keys "$keys" --events-per-key "$events" \
  --rate "$rate" >"$work/produce.log" 2>&1 &
producer=$!
pids+=("$producer")

# One status line until the group has predicted every event (or 5 minutes without completing):
# redrawn in place on a terminal, one line every 5 s otherwise (CI logs).
scrape() {  # prints "predicted lag" summed over both workers
  for i in 0 1; do curl -s "http://127.0.0.1:910$i/metrics"; done | awk '
    /^lstm_worker_predictions_total / {p += $2} /^lstm_worker_consumer_lag\{/ {l += $2}
    END {printf "%d %d\n", p, l}'
}
status() {  # predicted lag elapsed_s
  local width=30 filled=$(($1 * 30 / total)) rate=$(($1 / ($3 > 0 ? $3 : 1)))
  local bar
  bar="$(printf '%*s' "$filled" '' | tr ' ' '#')$(printf '%*s' $((width - filled)) '' | tr ' ' '.')"
  printf '== [%s] %3d%%  predicted %d/%d  %d events/s  lag %d  %ds' "$bar" $(($1 * 100 / total)) "$1" "$total" \
    "$rate" "$2" "$3"
}
started=$SECONDS last_line=-5 predicted=0
while :; do
  read -r predicted lag < <(scrape)
  elapsed=$((SECONDS - started))
  if [[ -t 1 ]]; then
    printf '\r%s\033[K' "$(status "$predicted" "$lag" "$elapsed")"
  elif ((elapsed - last_line >= 5)); then
    status "$predicted" "$lag" "$elapsed" && echo && last_line=$elapsed
  fi
  ((predicted >= total)) && ! kill -0 "$producer" 2>/dev/null && break
  if ((elapsed > 300)); then
    echo && echo "== gave up after 300 s: predicted $predicted of $total" && break
  fi
  sleep 0.5
done
final="$(status "$predicted" "$lag" $((SECONDS - started)))"
if [[ -t 1 ]]; then printf '\r%s\033[K\n' "$final"; else echo "$final"; fi
wait "$producer" || { echo "producer failed:"; cat "$work/produce.log"; exit 1; }
grep -v -e '^WARNING' -e '^I0000' -e '^E0000' "$work/produce.log" | sed 's/^/== /'

plot="$work/predictions.png"
echo "== verifying every prediction against the model on the full history (one call per prefix length)..."
$bin verify --bootstrap-servers "$bootstrap" --model "$work/model.keras" --input-topic "$input" \
  --output-topic "$output" --plot "$plot" 2>/dev/null
echo "== plot: $plot (4 keys: streaming predictions over the full-history ones)"
for i in 0 1; do
  printf '== worker %s: ' "$i"
  curl -s "http://127.0.0.1:910$i/metrics" | awk '
    /^lstm_worker_events_total\{result="predicted"\}/ {p=$2}
    /^lstm_worker_assigned_partitions / {a=$2}
    /^lstm_worker_round_keys_sum / {ks=$2} /^lstm_worker_round_keys_count / {kc=$2}
    END {printf "predicted=%d partitions=%d mean_round_keys=%.1f\n", p, a, (kc ? ks/kc : 0)}'
done
