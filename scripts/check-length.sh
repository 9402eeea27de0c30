#!/usr/bin/env bash
# No source file over 800 lines in the crates (crds/, runtime/, operator/) and the e2e harness
# (e2e/src/): a file that long holds more than one idea; split it by what it does. Tests under
# */tests/ are not counted. Prints the longest files either way, so the run shows the margin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
limit=${TIDEWATER_MAX_LINES:-800}
files=$(git ls-files 'crds/src/*.rs' 'runtime/src/*.rs' 'operator/src/*.rs' 'e2e/src/*.rs')
if [ -z "$files" ]; then
  echo "check-length: no source files found (run inside the git checkout)" >&2
  exit 1
fi
# shellcheck disable=SC2086
counts=$(wc -l $files | grep -v ' total$' | sort -rn)
over=$(awk -v limit=$limit '$1 > limit' <<<"$counts")
echo "longest files (limit $limit lines):"
head -3 <<<"$counts"
if [ -n "$over" ]; then
  echo "check-length: over $limit lines:" >&2
  echo "$over" >&2
  exit 1
fi
