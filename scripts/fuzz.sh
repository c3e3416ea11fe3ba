#!/bin/sh
# Fuzzes the kernel's decoder, batch parser and encoders under AddressSanitizer (+UBSan).
#   scripts/fuzz.sh [libfuzzer-runs] [standalone-iterations]
# 1. libFuzzer (clang) with a corpus in build-fuzz/corpus, -runs=N (default 2,000,000);
# 2. the standalone random/mutation driver (default 300,000 inputs), same target code.
# Needs clang and libclang-rt-14-dev (or the matching compiler-rt) on Debian.
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-2000000}
ITERS=${2:-300000}
OUT=build-fuzz
mkdir -p "$OUT/corpus"
SRC="addon/fuzz/fuzz_kernel.cc addon/src/xbzrle_diff.cc addon/src/xbzrle_encode.cc addon/src/xbzrle_ref.cc addon/src/cpu.cc addon/src/crc32c.cc addon/src/batch.cc addon/src/shuffle.cc addon/src/words.cc"
FLAGS="-std=c++17 -O1 -g -march=x86-64-v2 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
CXX=${CXX:-clang++}

echo "fuzz: building libFuzzer target"
$CXX $FLAGS -fsanitize=fuzzer $SRC -llz4 -o "$OUT/fuzz_kernel"
echo "fuzz: building standalone driver"
$CXX $FLAGS -DSTANDALONE $SRC -llz4 -o "$OUT/fuzz_standalone"

echo "fuzz: libFuzzer, $RUNS runs"
"$OUT/fuzz_kernel" -runs="$RUNS" -max_len=9000 -print_final_stats=1 "$OUT/corpus" 2>&1 | tail -n 20
echo "fuzz: standalone driver, $ITERS inputs"
"$OUT/fuzz_standalone" "$ITERS"
