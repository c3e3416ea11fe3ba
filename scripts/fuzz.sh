#!/bin/sh
# Fuzzes the kernel's decoder, batch parser and encoders under AddressSanitizer (+UBSan).
#   scripts/fuzz.sh [libfuzzer-runs] [standalone-iterations]
#   scripts/fuzz.sh --max-time SECONDS      libFuzzer only, for SECONDS (what npm test runs)
# 1. libFuzzer (clang) with a corpus in build-fuzz/corpus, -runs=N (default 2,000,000);
# 2. the standalone random/mutation driver (default 300,000 inputs), same target code.
# A binary is rebuilt only when a source is newer. A crash, a sanitizer report or a broken
# invariant makes this script exit non-zero; libFuzzer saves the input as build-fuzz/crash-*.
# Needs clang and libclang-rt-14-dev (or the matching compiler-rt) on Debian (scripts/setup.sh).
set -eu
cd "$(dirname "$0")/.."
MAX_TIME=
if [ "${1:-}" = "--max-time" ]; then
  MAX_TIME=${2:?--max-time needs SECONDS}
  case "$MAX_TIME" in *[!0-9]*|'') echo "fuzz: --max-time $MAX_TIME is not a whole number of seconds" >&2; exit 2 ;; esac
  shift 2
fi
RUNS=${1:-2000000}
ITERS=${2:-300000}
OUT=build-fuzz
mkdir -p "$OUT/corpus"
SRC="addon/fuzz/fuzz_kernel.cc addon/src/xbzrle_diff.cc addon/src/xbzrle_encode.cc addon/src/xbzrle_ref.cc addon/src/cpu.cc addon/src/crc32c.cc addon/src/batch.cc addon/src/shuffle.cc addon/src/words.cc"
FLAGS="-std=c++17 -O1 -g -march=x86-64-v2 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
CXX=${CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found: apt-get install clang libclang-rt-14-dev (scripts/setup.sh does)" >&2; exit 2; }

# build BINARY EXTRA-FLAGS: only when a source or header is newer than BINARY.
build() {
  bin=$1; shift
  if [ -x "$bin" ] && [ -z "$(find addon/fuzz addon/src scripts/fuzz.sh -newer "$bin" -type f 2>/dev/null | head -n 1)" ]; then
    echo "fuzz: $bin up to date"
    return
  fi
  echo "fuzz: building $bin"
  # shellcheck disable=SC2086
  $CXX $FLAGS "$@" $SRC -llz4 -o "$bin.tmp"
  mv "$bin.tmp" "$bin"
}

build "$OUT/fuzz_kernel" -fsanitize=fuzzer
if [ -n "$MAX_TIME" ]; then
  LIMIT="-max_total_time=$MAX_TIME"
  echo "fuzz: libFuzzer, $MAX_TIME s"
else
  LIMIT="-runs=$RUNS"
  echo "fuzz: libFuzzer, $RUNS runs"
fi
# The log keeps libFuzzer's own exit status (a pipe into tail would hide a crash).
LOG="$OUT/libfuzzer.log"
status=0
"$OUT/fuzz_kernel" "$LIMIT" -max_len=9000 -print_final_stats=1 -artifact_prefix="$OUT/" "$OUT/corpus" >"$LOG" 2>&1 || status=$?
tail -n 20 "$LOG"
if [ "$status" -ne 0 ]; then
  echo "fuzz: libFuzzer failed (exit $status): see $LOG and the input saved as $OUT/crash-*" >&2
  exit "$status"
fi
[ -n "$MAX_TIME" ] && exit 0

build "$OUT/fuzz_standalone" -DSTANDALONE
echo "fuzz: standalone driver, $ITERS inputs"
"$OUT/fuzz_standalone" "$ITERS"
