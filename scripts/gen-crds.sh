#!/usr/bin/env bash
# Regenerates crds/*.yaml from the Rust types and copies them into the Helm chart.
# With --check, fails (exit 1) when the committed files differ from what the types generate.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/env.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo run -q -p tidewater-crds --bin crdgen -- --write "$out"
if [ "${1:-}" = "--check" ]; then
  status=0
  for f in "$out"/*.yaml; do
    name=$(basename "$f")
    for dest in "crds/$name" "charts/tidewater/crds/$name"; do
      if ! cmp -s "$f" "$dest"; then
        echo "generated CRD differs from $dest: run scripts/gen-crds.sh and commit" >&2
        diff -u "$dest" "$f" | head -40 >&2 || true
        status=1
      fi
    done
  done
  exit $status
fi
cp "$out"/*.yaml crds/
cp "$out"/*.yaml charts/tidewater/crds/
echo "wrote crds/ and charts/tidewater/crds/"
