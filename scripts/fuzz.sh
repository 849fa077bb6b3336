#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time; fails if any of them finds a crash.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer, sancov passes); the stable toolchain accepts
# them with RUSTC_BOOTSTRAP=1, so no nightly is needed. The targets build unoptimized (`--dev`,
# still instrumented and with the address sanitizer): an optimized build of the dependency
# graph the targets pull in (istiod-lite's kube, the waypoint's hyper) takes about an hour on two
# cores, and a smoke of seconds per target needs coverage, not speed. The build goes to a target dir outside
# the clone ($CARGO_TARGET_DIR/fuzz, default ~/.cache/ambient-mesh/target/fuzz) so repeated runs
# are incremental. Each target starts from fuzz/seeds/<target> plus whatever it found before in
# fuzz/corpus/<target> (ignored by git). A crashing input is saved under
# fuzz/artifacts/<target>/ and the script exits 1 after running the remaining targets.
# No input may make a target allocate more than 256 MiB at once (-malloc_limit_mb) or grow past
# 1 GiB (-rss_limit_mb): unbounded allocation from untrusted bytes counts as a crash.
#
# Environment:
#   FUZZ_TARGETS   space-separated subset of targets to run (default: all in fuzz/fuzz_targets)
set -euo pipefail

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/ambient-mesh/target}/fuzz"
if [ -n "${FUZZ_TARGETS:-}" ]; then
    targets="$FUZZ_TARGETS"
else
    targets=""
    for file in fuzz/fuzz_targets/*.rs; do
        name="$(basename "$file" .rs)"
        targets="$targets $name"
    done
fi

start=$(date +%s)
echo "fuzz: building ($target_dir)" >&2
cargo fuzz build --dev --fuzz-dir fuzz --target-dir "$target_dir"
built=$(date +%s)

failed=()
for target in $targets; do
    corpus="fuzz/corpus/$target"
    seeds="fuzz/seeds/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    corpora=("$corpus")
    [ -d "$seeds" ] && corpora+=("$seeds")
    echo "fuzz: $target for ${seconds}s" >&2
    if ! cargo fuzz run --dev --fuzz-dir fuzz --target-dir "$target_dir" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=256 \
        -print_final_stats=1; then
        failed+=("$target")
    fi
done

end=$(date +%s)
echo "fuzz: build $((built - start))s, fuzzing $((end - built))s, total $((end - start))s" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a crash" >&2
