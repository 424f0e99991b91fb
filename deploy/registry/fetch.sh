#!/usr/bin/env bash
# Fetch Apicurio Registry (a Schema Registry with a Confluent-compatible API) from Maven Central
# into the user cache (never into git): its ready Quarkus distribution, unpacked. Prints the
# directory that holds the runner jar. Idempotent: a complete cache is reused.
set -euo pipefail
version=2.6.13.Final
artifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all"
cache="${LSTM_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lstm-stream-worker}"
home="$cache/apicurio-registry-$version"
if [[ ! -f "$home/.complete" ]]; then
  command -v mvn >/dev/null || { echo "registry/fetch.sh: Maven (mvn) is needed to fetch Apicurio Registry; install it (apt-get install maven)" >&2; exit 1; }
  download="$(mktemp -d "${TMPDIR:-/tmp}/apicurio-fetch.XXXXXX")"
  trap 'rm -rf "$download"' EXIT
  # dependency:copy needs a project only for its own settings: an empty POM, outside the repo
  printf '<project><modelVersion>4.0.0</modelVersion><groupId>local</groupId><artifactId>fetch</artifactId><version>1</version><packaging>pom</packaging></project>' >"$download/pom.xml"
  mvn -q -B -Dstyle.color=never -f "$download/pom.xml" dependency:copy -Dartifact="$artifact" \
      -DoutputDirectory="$download" >&2
  rm -rf "$home" && mkdir -p "$home"
  tar -xzf "$download"/apicurio-registry-app-"$version"-all.tar.gz -C "$home"
  ls "$home/apicurio-registry-app-$version-runner.jar" >/dev/null
  touch "$home/.complete"
fi
echo "$home"
