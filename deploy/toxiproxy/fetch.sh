#!/usr/bin/env bash
# Build Toxiproxy's server (the TCP proxy the cluster tests add latency with, tests/cluster/netfault.py)
# from its Go module into the user cache (never into git). Needs Go; the module comes through the
# Go module proxy like any Go dependency. Prints the binary's path. Idempotent: a built binary is
# reused.
set -euo pipefail
version=2.5.0
cache="${LSTM_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lstm-stream-worker}"
bin="$cache/toxiproxy-$version/toxiproxy-server"
if [[ ! -x "$bin" ]]; then
  command -v go >/dev/null || { echo "toxiproxy/fetch.sh: Go (go) is needed to build toxiproxy-server $version; install it (apt-get install golang-go)" >&2; exit 1; }
  build="$(mktemp -d "${TMPDIR:-/tmp}/toxiproxy-build.XXXXXX")"
  trap 'rm -rf "$build"' EXIT
  GOBIN="$build" go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$version" >&2
  mkdir -p "$(dirname "$bin")"
  mv "$build/server" "$bin.tmp" && mv "$bin.tmp" "$bin"
fi
echo "$bin"
