#!/usr/bin/env bash
# Quick start: installs what it needs, starts a local Kafka-compatible broker (Tansu) on
# 127.0.0.1:9092, produces sample click events, runs examples/clickstream.yaml for a while,
# stops it with SIGTERM (final checkpoint), and shows what landed through DuckDB.
# State goes to .tidewater/ (removed at start); the broker is stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${QUICKSTART_SECONDS:-25}
events=${QUICKSTART_EVENTS:-200000}

bash scripts/setup.sh
. scripts/env.sh
echo "[quickstart] building tidewater"
cargo build -q -p tidewater-runtime -p tidewater-e2e --bins
bin="$CARGO_TARGET_DIR/debug"

if (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  echo "[quickstart] something already listens on 127.0.0.1:9092; stop it first" >&2
  exit 1
fi
rm -rf .tidewater && mkdir -p .tidewater
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "[quickstart] starting broker on 127.0.0.1:9092"
bin/tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine memory://tansu/ > .tidewater/broker.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.2; done

echo "[quickstart] producing $events events and 3 bad records to topic clicks (4 partitions)"
"$bin/tw-produce" --bootstrap 127.0.0.1:9092 --topic clicks --partitions 4 --count "$events" --bad 3

echo "[quickstart] tidewater run -f examples/clickstream.yaml (for ${seconds}s; metrics on http://127.0.0.1:9464/metrics)"
"$bin/tidewater" run -f examples/clickstream.yaml &
tw=$!
pids+=($tw)
sleep "$seconds"
echo "[quickstart] metrics:"
(exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null \
  | grep -E '^tidewater_(records_in_total|rows_committed_total|commits_total|dead_lettered_records_total)' || true
kill -TERM "$tw"
wait "$tw"
echo "[quickstart] tidewater stopped cleanly (exit 0); reading the table with DuckDB:"
.venv/bin/python e2e/readers/inspect_table.py --catalog-uri "sqlite://$root/.tidewater/catalog.db" \
  --warehouse "file://$root/.tidewater/warehouse" --table analytics.clicks --readers duckdb --sample 5 \
  | .venv/bin/python -c '
import json, sys
v = json.load(sys.stdin)
d = v["duckdb"]
print("analytics.clicks: %d rows, %d distinct ids, %d snapshots" % (d["rows"], d["distinct"], len(v["snapshots"])))
for row in v["sample"]:
    print("  ", row)
'
echo "[quickstart] tidewater compact -f examples/compaction.yaml --once (table maintenance):"
"$bin/tidewater" compact -f examples/compaction.yaml --once | .venv/bin/python -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
t = r["tables"][0]
print("  result %s: %d files rewritten, %d hot partition(s) left alone (written in the last 10 minutes), %d snapshots expired" % (
    r["run"]["result"], t["filesRewritten"], t["hotPartitionsSkipped"], t["snapshotsExpired"]))
'
