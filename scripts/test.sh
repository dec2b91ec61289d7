#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (run as root to get the NAT
# lab tests; CI runs it as root with CI=true, where a missing prerequisite fails).
#
#   scripts/test.sh            # install what is missing, then fmt, clippy, every test
#
# Steps: Debian packages the lab needs (iproute2, nftables, conntrack, miniupnpd,
# miniupnpc, natpmpc), rustup components (rustfmt, clippy), then
# `cargo fmt --check`, `cargo clippy --all-targets -D warnings`, `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

APT_PACKAGES=(iproute2 nftables conntrack miniupnpd miniupnpd-nftables miniupnpc natpmpc python3 python3-libtorrent)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "WARNING: missing Debian packages (${missing[*]}) and not root: the NAT lab tests will skip (or fail under CI=true)." >&2
  fi
fi

if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked
