#!/usr/bin/env bash
# Stop the cluster started by cluster.sh (same KAFKA_PORT / KAFKA_CLUSTER_DIR); keeps its data.
# KAFKA_NODES ("1 2 3"): the nodes to stop. The nodes named stop together, each gracefully
# (controlled shutdown while the quorum still stands), any still running after
# KAFKA_STOP_TIMEOUT seconds (30) is killed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/kafka/node.sh
source "$here/node.sh"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
dir="${KAFKA_CLUSTER_DIR:-$repo/.cache/cluster-$port}"
[[ -d "$dir" ]] && dir="$(cd "$dir" && pwd)"
nodes="${KAFKA_NODES:-1 2 3}"
dirs=()
for i in $nodes; do
  [[ "$i" =~ ^[123]$ ]] || { echo "cluster-stop.sh: KAFKA_NODES='$nodes': expected node ids among 1 2 3" >&2; exit 1; }
  dirs+=("$dir/node-$i")
done
kafka_stop cluster-stop.sh "${dirs[@]}"
echo "stopped node(s) $nodes of the cluster on 127.0.0.1:$port"
