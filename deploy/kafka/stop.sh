#!/usr/bin/env bash
# Stop the local broker started by start.sh (same KAFKA_PORT / KAFKA_DIR); keeps its data.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/kafka/node.sh
source "$here/node.sh"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
dir="${KAFKA_DIR:-$repo/.cache/kafka-$port}"
[[ -d "$dir" ]] && dir="$(cd "$dir" && pwd)"
[[ -f "$dir/pid" ]] || { echo "no broker pid file in $dir"; exit 0; }
kafka_stop stop.sh "$dir"
echo "stopped broker on 127.0.0.1:$port"
