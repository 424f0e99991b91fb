#!/usr/bin/env bash
# Stop the local broker started by start.sh (same KAFKA_PORT / KAFKA_DIR); keeps its data.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
dir="${KAFKA_DIR:-$repo/.cache/kafka-$port}"
[[ -f "$dir/pid" ]] || { echo "no broker pid file in $dir"; exit 0; }
pid="$(cat "$dir/pid")"
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
fi
rm -f "$dir/pid"
echo "stopped broker on 127.0.0.1:$port"
