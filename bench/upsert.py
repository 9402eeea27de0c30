"""Upsert mode (`bash bench/run.sh upsert`): what keeping a table equal to a change stream costs.

1. Throughput: N Debezium change events (MySQL shape: updates carry the whole old row) over
   keys where 10% or 50% of the changes update an existing key, into an upsert table; and the
   same events' new rows into an append table (the baseline). Rows (changes) per CPU-second of
   the tidewater process, peak RSS, checkpoint and commit latency (p50/p99 from its log), and
   the key index: keys and estimated bytes at the end (its metrics), so bytes per million keys.
2. Read amplification: a pipeline commits 100 checkpoints of updates (every 300 ms) to one
   table; DuckDB's query time over the table and the delete files per data
   file, before and after one compaction pass (DuckDB: median of 3 scans, each in its own
   process, given up after --scan-timeout).
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import PY, ROOT, pct, run_tidewater, start_broker

sys.path.insert(0, str(ROOT / "e2e/readers"))

SOURCE = '{"version":"2.7.3.Final","connector":"mysql","name":"dbserver1","ts_ms":1733600000000,"snapshot":"false","db":"inventory","table":"customers","server_id":223344,"file":"mysql-bin.000003","pos":4521,"row":0}'


def row(key, v):
    return f'{{"id":{key},"v":{v},"name":"customer-{key}","email":"c{key}@example.com","balance":{v % 1000}.25,"city":"city-{key % 97}"}}'


def changes(n, update_ratio, seed=7):
    """(key, debezium value, after row) for n changes; the first is always an insert."""
    rng = random.Random(seed)
    live = []
    for v in range(n):
        if live and rng.random() < update_ratio:
            key = live[rng.randrange(len(live))]
            before = row(key, v - 1)
            op = "u"
        else:
            key = len(live)
            live.append(key)
            before, op = "null", "c"
        after = row(key, v)
        yield key, f'{{"before":{before},"after":{after},"source":{SOURCE},"op":"{op}","ts_ms":1733600000123}}', after


def produce(bootstrap, topic, items, partitions=1):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000})
    count = 0
    for key, value in items:
        while True:
            try:
                p.produce(topic, key=f'{{"id":{key}}}', value=value, partition=key % partitions)
                break
            except BufferError:
                p.poll(0.1)
        count += 1
    if p.flush(120):
        raise SystemExit("records not delivered")
    return count


SCHEMA = """      schema:
        - {name: id, type: long, required: true}
        - {name: v, type: long, required: true}
        - {name: name, type: string}
        - {name: email, type: string}
        - {name: balance, type: double}
        - {name: city, type: string}
"""


def spec(bootstrap, work, topic, mode, interval):
    fmt = "json" if mode == "append" else "debezium-json"
    upsert = {"append": "", "upsert": "    mode: upsert\n    primaryKey: [id]\n", "equality": "    mode: upsert\n    primaryKey: [id]\n    upsert:\n      deleteMode: equality\n"}[mode]
    return f"""apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: upsert-bench
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
      topics: [{topic}]
  format:
    type: {fmt}
  sink:
    catalog:
      type: sql
      uri: sqlite://{work}/catalog.db
      warehouse: {work}/warehouse
    table: bench.t
{upsert}    createTable:
{SCHEMA}    writeProperties:
      write.parquet.compression-codec: zstd
  checkpoint:
    interval: {interval}
  parallelism: 1
"""


def throughput(args, bootstrap, work, ratio, mode):
    topic = f"{mode}-{int(ratio * 100)}"
    items = changes(args.events, ratio)
    if mode == "append":
        produced = produce(bootstrap, topic, ((k, a) for k, _, a in items))
    else:
        produced = produce(bootstrap, topic, ((k, v) for k, v, _ in items))
    w = work / topic
    w.mkdir()
    path = w / "spec.yaml"
    path.write_text(spec(bootstrap, w, topic, mode, "10s"))
    scrape = ["tidewater_upsert_index_keys", "tidewater_upsert_index_bytes"]
    r = run_tidewater(args.bin, path, produced, w / "run.log", timeout=1800, scrape=scrape)
    r["changes"] = produced
    out = subprocess.run([str(PY), str(ROOT / "e2e/readers/inspect_tables.py"), "--catalog-uri", f"sqlite://{w}/catalog.db", "--warehouse", f"file://{w}/warehouse", "--readers", "duckdb"], check=True, capture_output=True, text=True)
    t = json.loads(out.stdout)["tables"]["bench.t"]["duckdb"]
    r["duckdb_rows"], r["duckdb_distinct"] = t["rows"], t["distinct"]
    return r


SCAN = """
import sys, time, argparse
sys.path.insert(0, sys.argv[2])
from inspect_table import duckdb_connection
con = duckdb_connection(argparse.Namespace(s3_endpoint=None))
con.execute("SET enable_progress_bar = false")
t = time.monotonic()
rows, _ = con.execute(f"SELECT count(*), sum(v) FROM iceberg_scan('{sys.argv[1]}')").fetchone()
print(time.monotonic() - t, rows)
"""


def duckdb_read(work, timeout):
    """Median seconds of 3 full scans by DuckDB (each in its own process, given up after
    `timeout` seconds), and delete files per data file."""
    from inspect_table import pyiceberg_catalog

    table = pyiceberg_catalog("tidewater", f"sqlite://{work}/catalog.db", f"file://{work}/warehouse").load_table("bench.t")
    props = table.current_snapshot().summary.additional_properties
    ratio = int(props.get("total-delete-files", 0)) / max(1, int(props.get("total-data-files", 1)))
    times, rows = [], None
    for _ in range(3):
        try:
            out = subprocess.run([str(PY), "-c", SCAN, table.metadata_location, str(ROOT / "e2e/readers")], check=True, capture_output=True, text=True, timeout=timeout).stdout.splitlines()[-1].split()
        except subprocess.TimeoutExpired:
            times.append(None)
            break
        times.append(float(out[0]))
        rows = int(out[1])
    done = [t for t in times if t is not None]
    return {"seconds": pct(done, 0.5) if len(done) == len(times) else None, "timeout": timeout, "rows": rows, "delete_files_per_data_file": ratio, "data_files": int(props.get("total-data-files", 0)), "delete_files": int(props.get("total-delete-files", 0))}


def amplification(args, bootstrap, work, mode):
    """100 checkpoints of updates, then DuckDB before and after a compaction pass."""
    topic = f"amp-{mode}"
    w = work / topic
    w.mkdir()
    keys, per = args.amp_keys, args.amp_per_checkpoint
    rng = random.Random(11)
    items = [(k, f'{{"before":null,"after":{row(k, 0)},"source":{SOURCE},"op":"c","ts_ms":1}}') for k in range(keys)]
    path = w / "spec.yaml"
    path.write_text(spec(bootstrap, w, topic, mode, "300ms"))
    produced = produce(bootstrap, topic, items)
    batches = []
    for c in range(1, 101):
        batch = []
        for _ in range(per):
            k = rng.randrange(keys)
            batch.append((k, f'{{"before":{row(k, c - 1)},"after":{row(k, c)},"source":{SOURCE},"op":"u","ts_ms":1}}'))
        batches.append(batch)

    def during():
        # One batch per checkpoint interval: about 100 commits with deletes.
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        time.sleep(2.0)
        for batch in batches:
            for k, v in batch:
                p.produce(topic, key=f'{{"id":{k}}}', value=v, partition=0)
            p.flush(30)
            time.sleep(0.3)

    total = produced + 100 * per
    r = run_tidewater(args.bin, path, total, w / "run.log", timeout=900, during=during)
    before = duckdb_read(w, args.scan_timeout)
    policy = w / "policy.yaml"
    policy.write_text(f"apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: m\nspec:\n  catalog:\n    type: sql\n    uri: sqlite://{w}/catalog.db\n    warehouse: {w}/warehouse\n  tables: [bench.t]\n  targetFileSizeBytes: 134217728\n  thresholds:\n    minSmallFiles: 2\n")
    t = time.monotonic()
    report = subprocess.run([str(args.bin / "tidewater"), "compact", "-f", str(policy), "--once"], check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    compact_s = time.monotonic() - t
    after = duckdb_read(w, args.scan_timeout)
    return {"checkpoints": r["checkpoint_ms"]["n"], "commit_ms": r["commit_ms"], "before": before, "after": after, "compaction_s": compact_s, "compaction": json.loads(report)["tables"][0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--amp-keys", type=int, default=200_000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--amp-per-checkpoint", type=int, default=2_000)
    ap.add_argument("--scan-timeout", type=int, default=120, help="seconds before a DuckDB scan is given up")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tw-upsert-"))
    broker, bootstrap = start_broker()
    results = {"events": args.events, "throughput": {}}
    try:
        time.sleep(1.0)
        for ratio in [] if args.skip_throughput else [0.1, 0.5]:
            for mode in ["append", "upsert", "equality"]:
                results["throughput"][f"{mode}-{int(ratio * 100)}"] = throughput(args, bootstrap, work, ratio, mode)
                print(json.dumps({mode: results["throughput"][f"{mode}-{int(ratio * 100)}"]}), flush=True)
        results["amplification"] = {mode: amplification(args, bootstrap, work, mode) for mode in ["upsert", "equality"]}
    finally:
        broker.terminate()
        broker.wait()
    rate = lambda r: r["changes"] / r["cpu_s"]
    lines = [f"{args.events:,} changes per run (Debezium MySQL shape for upsert in position and equality mode; the new rows as JSON for append), one partition, parallelism 1, checkpoint 10s, Tansu memory broker", "",
             "| run | updates | changes per CPU-second | vs append | peak RSS MB | checkpoint ms p50/p99 | commit ms p50/p99 | index keys | index bytes per key | DuckDB rows (distinct) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["throughput"].items():
        mode, pctu = name.split("-")
        base = results["throughput"][f"append-{pctu}"]
        keys = (r["scraped"] or {}).get("tidewater_upsert_index_keys")
        ib = (r["scraped"] or {}).get("tidewater_upsert_index_bytes")
        per_key = f"{ib / keys:.0f}" if keys and ib else "-"
        lines.append(f"| {mode} | {pctu}% | {rate(r):,.0f} | {rate(r) / rate(base):.0%} | {r['peak_rss_mb']:.0f} | {r['checkpoint_ms']['p50']:.0f}/{r['checkpoint_ms']['p99']:.0f} | {r['commit_ms']['p50']:.0f}/{r['commit_ms']['p99']:.0f} | {int(keys) if keys else '-'} | {per_key} | {r['duckdb_rows']:,} ({r['duckdb_distinct']:,}) |")
    lines += ["", f"Read amplification: {args.amp_keys:,} keys, then 100 checkpoints of {args.amp_per_checkpoint:,} updates each (checkpoint 300 ms)", "",
              "| delete mode | table | checkpoints | commit ms p50/p99 | data files | delete files | delete files per data file | DuckDB full scan (median of 3) | rows |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, a in results["amplification"].items():
        for name in ["before", "after"]:
            d = a[name]
            scan = f"{d['seconds'] * 1000:.0f} ms" if d["seconds"] is not None else f"> {d['timeout']} s (given up)"
            rows = f"{d['rows']:,}" if d["rows"] is not None else "-"
            lines.append(f"| {'position' if mode == 'upsert' else mode} | {name} compaction | {a['checkpoints']} | {a['commit_ms']['p50']:.0f}/{a['commit_ms']['p99']:.0f} | {d['data_files']} | {d['delete_files']} | {d['delete_files_per_data_file']:.2f} | {scan} | {rows} |")
        c = a["compaction"]
        lines.append(f"| | compaction pass {a['compaction_s']:.1f} s | | | {c.get('filesRewritten', 0)} files rewritten | | | {c.get('rewriteSkipped', '') or ''} | |")
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "upsert.json").write_text(json.dumps(results, indent=2))
    (out / "upsert.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
