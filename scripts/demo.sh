#!/usr/bin/env bash
# Builds the mesh, then runs `meshctl demo`: a two-node local cluster made of network
# namespaces (istiod-lite, and per node a ztunnel and the CNI node agent), an HTTP server and a
# client; a request in plaintext, the namespace labelled for ambient, the same request over
# HBONE with both SPIFFE identities, the metrics that moved; then it tears everything down.
#
# Usage: scripts/demo.sh [--release] [-- extra meshctl demo flags, e.g. --keep or --waypoint]
#
# Needs root (network namespaces, iptables; it uses sudo otherwise). Installs what is missing
# with apt-get: a C toolchain (jemalloc and ring build C code), iproute2, iptables, tcpdump,
# curl and containernetworking-plugins. The Rust toolchain must already be installed (rustup).
# Builds into $CARGO_TARGET_DIR (default ~/.cache/ambient-mesh/target, shared with
# scripts/test.sh); a debug build by default, much faster to compile than the LTO release.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

profile=debug
cargo_profile=()
demo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release; cargo_profile=(--release); shift ;;
        --) shift; demo_args=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if ! command -v cargo >/dev/null 2>&1; then
    echo "demo.sh: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
    exit 1
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for pair in cc:build-essential make:build-essential ip:iproute2 iptables-restore:iptables \
    tcpdump:tcpdump curl:curl /usr/lib/cni/bridge:containernetworking-plugins \
    /usr/lib/cni/host-local:containernetworking-plugins; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "demo.sh: installing ${missing[*]}" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"
echo "demo.sh: building the mesh ($profile) into $CARGO_TARGET_DIR" >&2
cargo build --locked "${cargo_profile[@]}" -p istiod-lite -p ztunnel -p cni-plugin -p meshctl

bin="$CARGO_TARGET_DIR/$profile"
echo >&2
# The cluster's state lives under a directory of its own; `--keep` leaves it up.
demo=("$bin/meshctl" --state-dir "${MESHCTL_STATE_DIR:-/var/lib/meshctl}" demo "${demo_args[@]}")
if [ "$(id -u)" -eq 0 ]; then exec "${demo[@]}"; else exec sudo "${demo[@]}"; fi
