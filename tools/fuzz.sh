#!/usr/bin/env bash
# Long libFuzzer runs of gw's fuzz targets, with clang (Debian's clang + libFuzzer):
#
#   tools/fuzz.sh framer|http|config|shm [SECONDS]     (default 300 s)
#
# Builds build-fuzz (clang, the libFuzzer targets), runs the target on a copy of
# its seed corpus (tests/fuzz/corpus/NAME) plus new inputs under
# build-fuzz/fuzz-NAME, and prints the command to merge the inputs worth keeping
# back into the seed corpus (ctest replays it as fuzz_corpus.NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-}
secs=${2:-300}
case "$target" in
  framer) bin=gw_framer_fuzz; extra=() ;;
  http) bin=gw_http_parser_fuzz; extra=(-max_len=4096) ;;
  config) bin=gw_config_fuzz; extra=(-max_len=8192) ;;
  # The seeds are small segments' bytes (tests/fuzz/make_shm_corpus.cpp).
  shm) bin=gw_shm_fuzz; extra=(-max_len=262144 -timeout=10) ;;
  *) echo "usage: tools/fuzz.sh framer|http|config|shm [SECONDS]" >&2; exit 2 ;;
esac
command -v clang++ >/dev/null || { echo "tools/fuzz.sh: clang++ is missing (apt-get install clang)" >&2; exit 1; }
corpus=tests/fuzz/corpus/$target
[ "$target" = http ] && corpus=tests/fuzz/corpus/http
build=build-fuzz
echo "== build $build (clang)"
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_TSAN_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "$bin"
work=$build/fuzz-$target
mkdir -p "$work"
echo "== $bin for $secs s: new inputs in $work, seeds from $corpus"
"$build/tests/$bin" -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" "$work" "$corpus"
echo "== to keep what adds coverage: $build/tests/$bin -merge=1 $corpus $work"
