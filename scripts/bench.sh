#!/usr/bin/env bash
# Benchmarks that print figures; the last line of each is a summary
# `<name>: key=value ...`. Results are recorded in BENCHMARKS.md.
#
#   scripts/bench.sh lines [--quick]   # line throughput vs raw TCP; RSS of idle connections
#   scripts/bench.sh portmap [ROUNDS]  # time to a working mapping (natkit per method, upnpc,
#                                      # natpmpc) in a NAT lab; needs root and the lab tools
#   scripts/bench.sh traversal [RUNS]  # Node::connect(node id) per cell of the traversal matrix in
#                                      # a NAT lab (20 ms WAN delay), RUNS (default 50) per cell;
#                                      # needs root and the lab tools
#   scripts/bench.sh relay [MIB] [--upgrades N]  # relayed vs direct throughput (1 KiB and 64 B
#                                      # lines, MIB MiB, default 64) and latency, relay CPU per GB,
#                                      # time from a new mapping to the upgrade (N runs, default 3),
#                                      # in a NAT lab (20 ms WAN delay); needs root and the lab tools
#   scripts/bench.sh dht [--quick]     # 1,000-node natkit vs mainline networks on loopback (as
#                                      # root each in a private network namespace); simulation
#                                      # at 10,000 and 100,000 nodes vs the notes' ideal table
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
case "$what" in
  lines) exec cargo bench --quiet --bench lines -- "$@" ;;
  portmap)
    rounds=${1:-5}
    [[ "$rounds" =~ ^[0-9]{1,3}$ && "$rounds" -ge 1 ]] || { echo "bench.sh portmap: ROUNDS must be 1-999" >&2; exit 2; }
    cargo build --quiet --release --bin natkit
    target=${CARGO_TARGET_DIR:-target}
    lab="pmbench$$"
    trap 'scripts/natlab.sh --name "$lab" down >/dev/null 2>&1 || true' EXIT
    scripts/natlab.sh --name "$lab" up cone cone --upnp natA --owner $$ >/dev/null
    /usr/bin/python3 scripts/lab/portmap_bench.py "$lab" "$(realpath "$target")/release/natkit" "$rounds"
    ;;
  dht) exec cargo bench --quiet -p natkit-dht --bench dht -- "$@" ;;
  traversal)
    runs=${1:-50}
    [[ "$runs" =~ ^[0-9]{1,4}$ && "$runs" -ge 1 ]] || { echo "bench.sh traversal: RUNS must be 1-9999" >&2; exit 2; }
    shift || true
    # The bench runs the release examples (alice, bob) and the natkit binary.
    cargo build --quiet --release --examples --bin natkit
    exec cargo bench --quiet --bench traversal -- --runs "$runs" "$@"
    ;;
  relay)
    mib=${1:-64}
    [[ "$mib" =~ ^[0-9]{1,5}$ && "$mib" -ge 1 ]] || { echo "bench.sh relay: MIB must be 1-99999" >&2; exit 2; }
    shift || true
    # The upgrade runs use the release examples (alice, bob) and the natkit binary.
    cargo build --quiet --release --examples --bin natkit
    exec cargo bench --quiet --bench relay -- --mib "$mib" "$@"
    ;;
  *) echo "usage: scripts/bench.sh lines [--quick] | portmap [ROUNDS] | dht [--quick] | traversal [RUNS] | relay [MIB]" >&2; exit 2 ;;
esac
