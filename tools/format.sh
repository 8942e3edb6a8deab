#!/usr/bin/env bash
# Formats gw's C++ sources (every tracked .cpp and .hpp) with clang-format and
# the repository's .clang-format.
#
#   tools/format.sh          rewrite the files that differ, in place
#   tools/format.sh --check  change nothing: list the files that differ, exit 1 if any
#                            (ctest's `format` test)
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: tools/format.sh [--check]" >&2; exit 2 ;;
esac
command -v clang-format >/dev/null || { echo "tools/format.sh: clang-format is missing (apt-get install clang-format)" >&2; exit 1; }

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp')
else
  mapfile -t files < <(find bench include src tests tools -name '*.cpp' -o -name '*.hpp' | sort)
fi

if [ $check -eq 0 ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f (tools/format.sh fixes it)"
    bad=$((bad + 1))
  fi
done
if [ $bad -ne 0 ]; then
  echo "$bad of ${#files[@]} files differ from .clang-format"
  exit 1
fi
echo "${#files[@]} files formatted"
