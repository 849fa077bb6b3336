#!/usr/bin/env bash
# The mesh benchmark (e2e/src/bin/mesh-bench.rs): throughput, latency at a fixed rate, and the
# client node's ztunnel CPU and memory, each with and without the mesh, on a two-node topology
# of network namespaces. Not a test: cargo test never runs it.
#
# Usage: scripts/bench.sh [--rate R] [--secs S] [--idle N] [--conns C]
#
# Builds the release binaries (ztunnel, istiod-lite, the e2e helpers) into $CARGO_TARGET_DIR
# (default ~/.cache/ambient-mesh/target), then runs the benchmark as root (with sudo when not
# root). Installs iperf3 and the e2e tools with apt-get when missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for pair in iperf3:iperf3 ip:iproute2 iptables-restore:iptables sysctl:procps prlimit:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo build --release -p ztunnel -p istiod-lite -p e2e --bins
exec $sudo env E2E_BIN_DIR="$CARGO_TARGET_DIR/release" "$CARGO_TARGET_DIR/release/mesh-bench" "$@"
