#!/usr/bin/env bash
# Benchmark (not a test): builds release binaries and runs bench/bench.py, which prints a
# Markdown report and writes bench/results/latest.json. `bash bench/run.sh distributed [args]`
# runs bench/distributed.py (coordinator + worker processes) instead; `bash bench/run.sh compaction`
# runs bench/compaction.py (bin-pack throughput on >= 2 GB of small files); `bash bench/run.sh
# tables` runs bench/tables.py (1, 10, 50, 200 tables from as many topics); `bash bench/run.sh formats`
# runs bench/formats.py (Avro against JSON, new field to committed column); `bash bench/run.sh
# upsert` runs bench/upsert.py (CDC upsert against append, index memory, read amplification).
# See docs/benchmarks.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
. scripts/env.sh
cargo build -q --release -p tidewater-runtime -p tidewater-e2e --bins
if [ "${1:-}" = compaction ]; then
  shift
  exec .venv/bin/python bench/compaction.py --bin "$CARGO_TARGET_DIR/release" "$@"
fi
if [ "${1:-}" = formats ]; then
  shift
  exec .venv/bin/python bench/formats.py --bin "$CARGO_TARGET_DIR/release" "$@"
fi
if [ "${1:-}" = upsert ]; then
  shift
  exec .venv/bin/python bench/upsert.py --bin "$CARGO_TARGET_DIR/release" "$@"
fi
if [ "${1:-}" = tables ]; then
  shift
  exec .venv/bin/python bench/tables.py --bin "$CARGO_TARGET_DIR/release" "$@"
fi
if [ "${1:-}" = distributed ]; then
  shift
  exec .venv/bin/python bench/distributed.py --bin "$CARGO_TARGET_DIR/release" "$@"
fi
exec .venv/bin/python bench/bench.py --bin "$CARGO_TARGET_DIR/release" "$@"
