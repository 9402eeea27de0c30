"""Many tables on one machine (`bash bench/run.sh tables`): the same total number of ~200-byte
JSON events spread over 1 topic into one table (the one-table figure), then over 10, 50 and
200 topics routed into one table each (`route: bench.{topic}`, tables created on first use,
`maxOpenWriters` at its default 64, so 200 tables roll writers). Per run: rows per CPU-second
of the tidewater process against the one-table run, checkpoint and commit latency p50/p99,
peak RSS; an independent DuckDB count of every table afterwards.
"""
import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench import PY, ROOT, run_tidewater, start_broker

SCHEMA = """      schema:
        - {name: id, type: long, required: true}
        - {name: ts, type: timestamptz}
        - {name: user_id, type: string}
        - {name: event_type, type: string}
        - {name: amount, type: double}
      partitionBy: ["day(ts)"]"""


def spec(bootstrap, work, tables, interval):
    if tables == 1:
        source = "      topics: [one]"
        sink = "    table: bench.one"
    else:
        source = f"      topicPattern: 'm{tables}-.*'"
        sink = '    route:\n      table: "bench.{topic}"'
    return f"""apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: tables
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
{source}
  format:
    type: json
  sink:
    catalog:
      type: sql
      uri: sqlite://{work}/catalog.db
      warehouse: {work}/warehouse
{sink}
    createTable:
{SCHEMA}
    writeProperties:
      write.parquet.compression-codec: zstd
  checkpoint:
    interval: {interval}
  parallelism: 1
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--events", type=int, default=2_000_000, help="total per run")
    ap.add_argument("--tables", default="1,10,50,200")
    ap.add_argument("--interval", default="500ms")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tw-tables-"))
    broker, bootstrap = start_broker()
    results = {"events": args.events, "runs": {}}
    try:
        time.sleep(1.0)
        for n in [int(x) for x in args.tables.split(",")]:
            topics = ["one"] if n == 1 else [f"m{n}-{i:03}" for i in range(n)]
            per = args.events // len(topics)
            for t in topics:
                subprocess.run([str(args.bin / "tw-produce"), "--bootstrap", bootstrap, "--topic", t, "--partitions", "1", "--count", str(per)], check=True, capture_output=True)
            w = work / f"t{n}"
            w.mkdir()
            path = w / "spec.yaml"
            path.write_text(spec(bootstrap, w, n, args.interval))
            r = run_tidewater(args.bin, path, per * len(topics), w / "run.log", timeout=1800)
            check = subprocess.run([str(PY), str(ROOT / "e2e/readers/inspect_tables.py"), "--catalog-uri", f"sqlite://{w}/catalog.db", "--warehouse", f"file://{w}/warehouse", "--readers", "duckdb"], check=True, capture_output=True, text=True)
            tables = json.loads(check.stdout)["tables"]
            r["tables"] = len(tables)
            r["duckdb_rows"] = sum(t["duckdb"]["rows"] for t in tables.values())
            r["duckdb_distinct_per_table_ok"] = all(t["duckdb"]["rows"] == t["duckdb"]["distinct"] for t in tables.values())
            results["runs"][n] = r
    finally:
        broker.terminate()
        broker.wait()

    one = results["runs"].get(1)
    rate = lambda r: r["rows"] / r["cpu_s"]
    lines = [
        f"{args.events:,} JSON events per run, ~200 bytes, one partition per topic, parallelism 1, checkpoint {args.interval}, Tansu memory broker",
        "",
        "| tables | rows per CPU-second | vs one table | checkpoint p50 / p99 ms | commit p50 / p99 ms | peak RSS MB | DuckDB rows (distinct per table) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in results["runs"].items():
        vs = f"{rate(r) / rate(one):.0%}" if one else ""
        c, m = r["checkpoint_ms"], r["commit_ms"]
        fmt = lambda v: f"{v:.0f}" if v is not None else "–"
        lines.append(f"| {n} | {rate(r):,.0f} | {vs} | {fmt(c['p50'])} / {fmt(c['p99'])} | {fmt(m['p50'])} / {fmt(m['p99'])} | {r['peak_rss_mb']:.0f} | {r['duckdb_rows']:,} ({'ok' if r['duckdb_distinct_per_table_ok'] else 'DUPLICATES'}) |")
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "tables.json").write_text(json.dumps(results, indent=2))
    (out / "tables.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
