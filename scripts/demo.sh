#!/usr/bin/env bash
# Builds istiod-lite and meshctl, then runs `meshctl demo`: a CA, two workload identities and
# bytes through a mutual-TLS HBONE tunnel, all on 127.0.0.1.
#
# Usage: scripts/demo.sh [--release] [-- extra meshctl demo flags]
#
# Installs a C toolchain with apt-get if one is missing (jemalloc and ring build C code). The
# Rust toolchain must already be installed (rustup). Builds into $CARGO_TARGET_DIR (default
# ~/.cache/ambient-mesh/target, shared with scripts/test.sh); a debug build by default, which
# compiles much faster on a small machine than the LTO release build.
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
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if ! command -v cargo >/dev/null 2>&1; then
    echo "demo.sh: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
    exit 1
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    echo "demo.sh: installing a C toolchain (build-essential)" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"
echo "demo.sh: building istiod-lite and meshctl ($profile) into $CARGO_TARGET_DIR" >&2
cargo build --locked "${cargo_profile[@]}" -p istiod-lite -p meshctl

bin="$CARGO_TARGET_DIR/$profile"
echo >&2
exec "$bin/meshctl" demo --istiod-lite "$bin/istiod-lite" "${demo_args[@]}"
