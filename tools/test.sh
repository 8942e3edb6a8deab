#!/usr/bin/env bash
# Sets up (apt-get via tools/setup.sh), builds, and runs every test through ctest:
# unit tests, the ThreadSanitizer shm and reactor stress tests and the integration suite;
# then the unit and integration tests again on an AddressSanitizer +
# UndefinedBehaviorSanitizer build.
#
#   tools/test.sh            everything
#   tools/test.sh --no-asan  skip the sanitizer build
# BUILD_DIR (default build) and ASAN_BUILD_DIR (default build-asan) pick the build directories.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=1
for a in "$@"; do
  case "$a" in
    --no-asan) asan=0 ;;
    *) echo "usage: tools/test.sh [--no-asan]" >&2; exit 2 ;;
  esac
done
build=${BUILD_DIR:-build}
jobs=$(nproc)

# ctest, and on a failure each failed check again, short, at the very end of the
# output: a CI log cut in its middle keeps its head and its tail, and the tail
# then still says what failed (ctest's own summary names only the test files).
run_ctest() {
  local dir=$1
  shift
  if "$@" ctest --test-dir "$dir" --output-on-failure --timeout 600; then return 0; fi
  echo "== what failed, short (the whole output of each failed test is above)"
  local log="$dir/Testing/Temporary/LastTest.log"
  [ -f "$log" ] && awk '
    /^(FAIL|ERROR): / { p = 1; dashes = 0; n = 0 }
    p && /^-+$/ && length($0) == 70 { if (++dashes == 2) { p = 0; print ""; next } }
    p && /^=+$/ && length($0) == 70 { p = 0; print ""; next }
    p && n++ < 60 { print }
    /: (FATAL )?ERROR: / { print; d = 4; next }
    d > 0 { print; d-- }
  ' "$log" | head -400 || true
  return 1
}

tools/setup.sh
echo "== build ($build)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$jobs"
echo "== tests"
run_ctest "$build"

if [ "$asan" = 1 ]; then
  abuild=${ASAN_BUILD_DIR:-build-asan}
  echo "== every test again under AddressSanitizer + UndefinedBehaviorSanitizer ($abuild)"
  cmake -S . -B "$abuild" -DCMAKE_BUILD_TYPE=Debug -DGW_SANITIZE=address,undefined >/dev/null
  cmake --build "$abuild" -j"$jobs"
  # Reports go to gwd's log, where the integration harness looks for them.
  # GW_TEST_TIMEOUT_SCALE doubles the tests' T() waits (how long a test waits
  # for something to happen, never how soon): a Debug build under ASan runs
  # gwd 2-5 times slower.
  run_ctest "$abuild" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 GW_TEST_TIMEOUT_SCALE="${GW_TEST_TIMEOUT_SCALE:-2}"
fi
echo "== all tests passed"
