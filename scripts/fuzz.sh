#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — fuzz every parser that reads the network or a file
# (the targets of src/fuzz.rs) for SECONDS each (default 10), from the corpus in
# fuzz/corpus/<target>/.
#   With `cargo +nightly` and cargo-fuzz: coverage-guided libFuzzer runs; new
#   interesting inputs land in the corpus directory (commit the good ones).
#   Without them (or with SPICED_FUZZ_STABLE=1): tests/fuzz_stable.rs, a seeded
#   mutation loop on stable with an allocation cap — never a silent skip.
# For hours: `bash scripts/fuzz.sh 3600` (an hour per target).
# Exit status: non-zero on any crash, leak of the caps or timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
# SPICED_FUZZ_TARGETS="a b" runs only those (cargo-fuzz mode).
targets=${SPICED_FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^spiced-fuzz$')}

# SPICED_FUZZ_INSTALL=1 (CI): install cargo-fuzz from crates.io when a nightly
# toolchain is there but cargo-fuzz is not (about 2 minutes).
if [ "${SPICED_FUZZ_INSTALL:-0}" = 1 ] && [ "${SPICED_FUZZ_STABLE:-0}" != 1 ] \
  && cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet || echo "fuzz.sh: cargo-fuzz did not install; using the stable harness"
fi
if [ "${SPICED_FUZZ_STABLE:-0}" != 1 ] && cargo +nightly --version >/dev/null 2>&1 \
  && cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz on $(cargo +nightly --version), ${secs} s per target"
  for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    # -rss_limit_mb: no input may make a parser hold more than this.
    (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=512 -max_len=65536 -print_final_stats=1 2>&1 \
      | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY)' \
      | sed "s/^/$t: /") || { echo "fuzz.sh: $t FAILED (see fuzz/artifacts/$t)"; exit 1; }
  done
  echo "fuzz.sh: every target ran ${secs} s without a crash"
else
  echo "fuzz.sh: no cargo-fuzz on a nightly toolchain here: the stable harness, ${secs} s per target"
  SPICED_FUZZ_SECS="$secs" cargo test --release --test fuzz_stable -- --nocapture
fi
