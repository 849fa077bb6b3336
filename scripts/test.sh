#!/usr/bin/env bash
# The full gate, as CI runs it (.ci/run): formatting, lints, build, the static ztunnel (built
# and run through a local cluster), every test, a short fuzz run.
#
# Usage: scripts/test.sh
#
# Installs what it needs when missing: rustfmt and clippy, the x86_64-unknown-linux-musl target
# and musl-tools (the static ztunnel), a C toolchain, kubernetes-validate
# (PyPI, for the manifests), and the tools of the
# end-to-end tests (iproute2, iptables, nftables, procps, tcpdump, curl, nghttp2-client, containernetworking-plugins, tmux,
# prometheus) with apt-get; cargo-fuzz is installed by scripts/fuzz.sh. The end-to-end tests
# need root (network namespaces) and fail without it.
# Builds into a target directory outside the clone, $CARGO_TARGET_DIR (default
# ~/.cache/ambient-mesh/target), so CI's fresh clones reuse earlier builds.
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default ~/.cache/ambient-mesh/target)
#   FUZZ_SECONDS       seconds per fuzz target (default 8 for 10 targets, about the 75 s the
#                      gate spent on 5 targets at 15 s; 0 skips fuzzing)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}"
# CI builds from clean clones: incremental state would only grow the cache (by gigabytes).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 1 ] && echo always || echo never)}"
# Tests that need mesh's in-process CA; every target builds with it.
features="mesh/testing"
fuzz_seconds="${FUZZ_SECONDS:-8}"

start=$(date +%s)
step_name="setup"
timings=()

log() { printf '\n=== %s\n' "$*"; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\ntest.sh: FAILED at step "%s" (exit %d) after %s\n' "$step_name" "$rc" "$(elapsed "$start")"
    fi
}
trap on_exit EXIT

# Runs "$@" as step $1, recording how long it took.
step() {
    step_name="$1"
    shift
    log "$step_name: $*"
    local t0
    t0=$(date +%s)
    "$@"
    timings+=("$step_name $(elapsed "$t0")")
}

# --- what the gate needs -------------------------------------------------------------------
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# command -> Debian package: a C toolchain (jemalloc and ring build C code) and the tools the
# end-to-end tests drive: network namespaces (iproute2), capture rules (iptables; nft lists the ruleset the CNI tests compare), the wire
# (tcpdump), musl-gcc for the static ztunnel, requests from pods (curl, and nghttp for HTTP/2), the CNI reference plugins of the local cluster, a terminal for `meshctl top` (tmux), a TLS client that reads istiod-lite's serving certificate (openssl), and a
# real Prometheus that scrapes it (only the binary is run; its service is never started).
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for pair in cc:build-essential make:build-essential ip:iproute2 sysctl:procps \
    iptables-restore:iptables iptables-save:iptables nft:nftables tcpdump:tcpdump curl:curl nghttp:nghttp2-client \
    /usr/lib/cni/bridge:containernetworking-plugins \
    /usr/lib/cni/host-local:containernetworking-plugins prometheus:prometheus tmux:tmux iperf3:iperf3 \
    openssl:openssl musl-gcc:musl-tools; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "installing the $component component"
        rustup component add "$component"
    fi
done
if cargo nextest --version >/dev/null 2>&1; then
    have_nextest=1
else
    have_nextest=0
    log "cargo-nextest not found: tests run with cargo test instead"
fi
# ztunnel ships statically linked against musl (manifests/images/ztunnel.Containerfile).
musl=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$musl"; then
    log "installing the $musl target"
    rustup target add "$musl"
fi
printf 'toolchain: %s; target dir: %s\n' "$(rustc --version)" "$CARGO_TARGET_DIR"

# --- the gate ------------------------------------------------------------------------------
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked --features "$features" -- -D warnings
# The shipped feature set must build on its own, too.
step build cargo build --workspace --locked
# The static ztunnel the image ships: it must keep building, linking without shared libraries
# (no ELF interpreter), and carrying bytes: the benchmark's smoke (a local cluster, about 10 s)
# with it standing in for the glibc build beside the other binaries of the build step.
static_ztunnel() {
    cargo build --locked -p ztunnel --target "$musl"
    local bin="$CARGO_TARGET_DIR/$musl/debug/ztunnel"
    if readelf -l "$bin" | grep -q INTERP; then
        echo "$bin is dynamically linked" >&2
        return 1
    fi
    local dir="$CARGO_TARGET_DIR/static-smoke" b
    mkdir -p "$dir"
    for b in meshctl istiod-lite cni-plugin waypoint mesh-bench e2e-tcp; do
        cp -f "$CARGO_TARGET_DIR/debug/$b" "$dir/$b"
    done
    cp -f "$bin" "$dir/ztunnel"
    as_root env E2E_BIN_DIR="$dir" "$dir/mesh-bench" --smoke --no-upstream | tee "$dir/smoke.log"
    grep -q '^smoke: ours: ' "$dir/smoke.log" && grep -q '^smoke: ok' "$dir/smoke.log"
}
step static-ztunnel static_ztunnel
if [ "$have_nextest" -eq 1 ]; then
    # Also builds every binary with the test features, so meshctl's demo test finds
    # istiod-lite next to meshctl.
    # .config/nextest.toml kills a test that runs past 2 minutes.
    step tests cargo nextest run --workspace --locked --features "$features" --no-fail-fast
else
    step tests timeout 45m cargo test --workspace --locked --features "$features" --no-fail-fast
fi
step doctests cargo test --workspace --locked --features "$features" --doc
# Every manifest against the real schemas: Kubernetes kinds with kubernetes-validate (strict),
# the mesh's custom resources with their own CRDs; the Prometheus configs, rules, rule unit
# tests and dashboard queries with promtool (Debian's prometheus package, installed above).
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
    log "installing kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
step manifests python3 scripts/validate-manifests.py

if [ "$fuzz_seconds" -gt 0 ] && [ -f scripts/fuzz.sh ]; then
    step fuzz bash scripts/fuzz.sh "$fuzz_seconds"
else
    timings+=("fuzz skipped")
fi

trap - EXIT
printf '\n'
for t in "${timings[@]}"; do printf '  %s\n' "$t"; done
printf 'test.sh: PASSED (fmt, clippy, build, static-ztunnel, tests, doctests, manifests, fuzz %ss/target) in %s\n' \
    "$fuzz_seconds" "$(elapsed "$start")"
