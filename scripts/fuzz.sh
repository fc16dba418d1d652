#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for a bounded time (FUZZ_SECONDS each, 20 by default:
# about three minutes for the nine targets, after the build), starting from the
# checked-in seed corpus. A crash fails the run and leaves its input in
# fuzz/regressions/<target>/, where crates/fuzzing/tests/corpus.rs replays it in every
# `cargo test` from then on (commit it with the fix).
#
# Needs cargo-fuzz (installed here if absent, from crates.io) and libFuzzer's -Z flags, which
# the stable toolchain accepts with RUSTC_BOOTSTRAP=1. New corpus entries go to a scratch
# directory, so the tree is left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1

echo "== fuzz: building the targets (release, AddressSanitizer)"
cargo fuzz build --fuzz-dir fuzz

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo fuzz list --fuzz-dir fuzz); do
  echo "== fuzz: $target for ${seconds}s"
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  if ! cargo fuzz run --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$target/" >"$scratch/$target.log" 2>&1; then
    tail -40 "$scratch/$target.log"
    mkdir -p "fuzz/regressions/$target"
    cp fuzz/artifacts/"$target"/* "fuzz/regressions/$target/" 2>/dev/null || true
    failed+=("$target")
  else
    grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$scratch/$target.log" | tail -1 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs saved under fuzz/regressions/" >&2
  exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
