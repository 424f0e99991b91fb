#!/usr/bin/env bash
# Fetch Apache Kafka's broker jars from Maven Central into the user cache (never into git).
# Prints the directory that holds the jars. Idempotent: a complete cache is reused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${LSTM_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lstm-stream-worker}"
libs="$cache/kafka-$version/libs"
if [[ ! -f "$libs/.complete" ]]; then
  command -v mvn >/dev/null || { echo "fetch.sh: Maven (mvn) is needed to fetch Kafka; install it (apt-get install maven)" >&2; exit 1; }
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  ls "$libs"/kafka_2.13-"$version".jar >/dev/null
  touch "$libs/.complete"
fi
echo "$libs"
