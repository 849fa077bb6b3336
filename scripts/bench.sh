#!/usr/bin/env bash
# The mesh benchmark (e2e/src/bin/mesh-bench/): throughput, latency at a fixed rate, and the
# client node's ztunnel CPU and memory, each with and without the mesh; and HTTP/1.1 with no
# mesh, through the L4 mesh and through a waypoint (the waypoint's CPU and memory), on the local cluster of
# meshctl (`meshctl cluster up --nodes 2`: istiod-lite, a CNI node agent and a ztunnel per node,
# pods through the real CNI chain). Not a test: cargo test never runs it.
#
# Usage: scripts/bench.sh [--rate R] [--secs S] [--conn-secs S] [--idle N] [--conns C]
#                         [--http-rate R] [--rounds N] [--only tcp|http|all|scaling]
#
# Builds the release binaries (meshctl, and the ztunnel, istiod-lite, cni-plugin and waypoint it starts
# from its own directory, and mesh-bench) into $CARGO_TARGET_DIR (default
# ~/.cache/ambient-mesh/target), ztunnel as the static (musl) binary its image ships, gathers
# them in $CARGO_TARGET_DIR/bench-bin, then runs the benchmark as root (with sudo when not root).
# Installs iperf3, curl, the reference CNI plugins, musl-gcc and the other tools with apt-get,
# and the musl target with rustup, when missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for pair in iperf3:iperf3 curl:curl ip:iproute2 iptables-restore:iptables sysctl:procps \
    musl-gcc:musl-tools; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# meshctl's node network: Debian's bridge and host-local CNI plugins.
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ||
    missing+=(containernetworking-plugins)
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# ztunnel is benchmarked as shipped: statically linked against musl (docs/performance.md,
# "Levers tried": no shared libraries to map, 2.7 MiB less idle RSS, same throughput).
musl=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$musl" || rustup target add "$musl"
cargo build --release -p meshctl -p ztunnel -p istiod-lite -p cni-plugin -p waypoint -p e2e --bins
cargo build --release -p ztunnel --target "$musl"
# One directory with every binary (copies: meshctl starts the daemons found next to itself).
bin="$CARGO_TARGET_DIR/bench-bin"
mkdir -p "$bin"
for b in meshctl istiod-lite cni-plugin waypoint mesh-bench e2e-tcp; do
    cp -f "$CARGO_TARGET_DIR/release/$b" "$bin/$b"
done
cp -f "$CARGO_TARGET_DIR/$musl/release/ztunnel" "$bin/ztunnel"
exec $sudo env E2E_BIN_DIR="$bin" "$bin/mesh-bench" "$@"
