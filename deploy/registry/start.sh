#!/usr/bin/env bash
# Start Apicurio Registry (in-memory storage, HTTP on 127.0.0.1 only) in the background.
# Env: REGISTRY_PORT (8081), REGISTRY_DIR (log, pid; default .cache/registry-$REGISTRY_PORT under
# the repo), REGISTRY_HEAP (256m), REGISTRY_NICE (0: its CPU priority; `make bench` runs it at 10,
# below the worker under test). Its Confluent-compatible API is under /apis/ccompat/v7.
# Prints that URL once the registry answers. Storage is in memory: a restart starts empty.
# Apicurio's own variables (e.g. AUTH_ENABLED, KEYCLOAK_URL) pass through the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${REGISTRY_PORT:-8081}"
dir="${REGISTRY_DIR:-$repo/.cache/registry-$port}"
mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"
url="http://127.0.0.1:$port/apis/ccompat/v7"
# 401: a registry that requires credentials (AUTH_ENABLED) answers too
answers() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/subjects")" =~ ^(200|401)$ ]]; }

if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && answers; then
  echo "$url"
  exit 0
fi
home="$("$here/fetch.sh")"
jar="$(ls "$home"/apicurio-registry-app-*-runner.jar)"
# Quarkus reads its settings from system properties; the management port (health, metrics)
# is off so that two registries on one machine need only their HTTP port each
nohup nice -n "${REGISTRY_NICE:-0}" java -Xmx"${REGISTRY_HEAP:-256m}" -XX:+UseSerialGC \
  -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" -Dquarkus.management.enabled=false \
  -Dquarkus.log.console.level=WARN -jar "$jar" >"$dir/registry.log" 2>&1 &
echo $! >"$dir/pid"

for _ in $(seq 1 120); do
  if answers; then
    echo "$url"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "registry/start.sh: the registry exited at start; see $dir/registry.log" >&2
    tail -5 "$dir/registry.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "registry/start.sh: the registry did not answer on $url within 60 s; see $dir/registry.log" >&2
exit 1
