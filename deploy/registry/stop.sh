#!/usr/bin/env bash
# Stop the registry started by start.sh (same REGISTRY_PORT / REGISTRY_DIR). Its storage is in
# memory: the schemas go with it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${REGISTRY_PORT:-8081}"
dir="${REGISTRY_DIR:-$repo/.cache/registry-$port}"
[[ -f "$dir/pid" ]] || { echo "no registry pid file in $dir"; exit 0; }
pid="$(cat "$dir/pid")"
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
fi
rm -f "$dir/pid"
echo "stopped registry on 127.0.0.1:$port"
