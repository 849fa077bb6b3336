#!/usr/bin/env bash
# The mesh benchmark (e2e/src/bin/mesh-bench/): throughput, latency at a fixed rate, and the
# client node's ztunnel CPU and memory, each with and without the mesh; and HTTP/1.1 with no
# mesh, through the L4 mesh and through a waypoint (the waypoint's CPU and memory), on the local cluster of
# meshctl (`meshctl cluster up --nodes 2`: istiod-lite, a CNI node agent and a ztunnel per node,
# pods through the real CNI chain). Not a test: cargo test never runs it.
#
# Usage: scripts/bench.sh [--rate R] [--secs S] [--idle N] [--conns C]
#                         [--http-rate R] [--rounds N] [--only tcp|http|all|scaling]
#
# Builds the release binaries (meshctl, and the ztunnel, istiod-lite, cni-plugin and waypoint it starts
# from its own directory, and mesh-bench) into $CARGO_TARGET_DIR (default
# ~/.cache/ambient-mesh/target), then runs the benchmark as root (with sudo when not root).
# Installs iperf3, curl, the reference CNI plugins and the other tools with apt-get when missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for pair in iperf3:iperf3 curl:curl ip:iproute2 iptables-restore:iptables sysctl:procps; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# meshctl's node network: Debian's bridge and host-local CNI plugins.
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ||
    missing+=(containernetworking-plugins)
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo build --release -p meshctl -p ztunnel -p istiod-lite -p cni-plugin -p waypoint -p e2e --bins
exec $sudo env E2E_BIN_DIR="$CARGO_TARGET_DIR/release" "$CARGO_TARGET_DIR/release/mesh-bench" "$@"
