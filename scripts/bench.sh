#!/usr/bin/env bash
# Benchmarks that print figures; the last line of each is a summary
# `<name>: key=value ...`. Results are recorded in BENCHMARKS.md.
#
#   scripts/bench.sh lines [--quick]   # line throughput vs raw TCP; RSS of idle connections
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
case "$what" in
  lines) exec cargo bench --quiet --bench lines -- "$@" ;;
  *) echo "usage: scripts/bench.sh lines [--quick]" >&2; exit 2 ;;
esac
