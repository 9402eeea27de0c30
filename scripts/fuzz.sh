#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for SECONDS each (default 600), one after the
# other, outside CI: bash scripts/fuzz.sh [SECONDS] [TARGET...]
# New inputs go to a scratch corpus seeded from fuzz/corpus/<target> (the committed corpus
# stays small; CI replays it); a crash is left in fuzz/artifacts/<target>/ and stops the run.
# Prints, per target, the executions and the corpus size libFuzzer reached.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json_decoder avro_decoder route_template infer_table avro_table change_decoder)
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/tidewater/fuzz-target}"
scratch=$(mktemp -d /tmp/tidewater-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  cp corpus/"$t"/* "$scratch/$t/" 2>/dev/null || true
  log="$scratch/$t.log"
  echo "== $t: ${seconds}s"
  if ! cargo fuzz run --sanitizer none -O --target-dir "$target_dir" "$t" "$scratch/$t" \
      -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t FAILED (crash input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $t ran ${seconds}s, $runs executions, corpus $(ls "$scratch/$t" | wc -l) inputs, no crash"
done
