"""Avro against JSON, and how fast a new field becomes a column (`bash bench/run.sh formats`).

1. The same events (the ~200-byte click events of bench.py: id, ts, user_id, event_type, amount,
   page, session) produced once as JSON and once as Confluent-framed Avro (confluent-kafka's
   AvroSerializer against the test registry); one tidewater run per topic into one table:
   rows per CPU-second of the tidewater process, peak RSS, DuckDB count afterwards.
2. Schema-change freshness: a pipeline runs on a topic fed at a steady rate; three times, the
   producer starts sending records with a new field (JSON), or registers a new schema version
   with a new optional field (Avro). Measured: from the first such record's delivery to the
   first committed snapshot whose schema has the column (PyIceberg polling the catalog every
   50 ms), against the checkpoint interval.
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import PY, ROOT, free_port, metric, run_tidewater, start_broker

sys.path.insert(0, str(ROOT / "e2e/readers"))

KINDS = ["click", "view", "purchase", "scroll"]
EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def event(i, extra=()):
    """One event as a dict (ts in microseconds since the epoch) plus extra fields set to i."""
    e = {"id": i, "ts": EPOCH_US + i * 1000, "user_id": f"user-{i % 100_000:06}", "event_type": KINDS[i % 4], "amount": (i % 500) + (i % 100) / 100, "page": f"/products/category-{i % 37}/item-{(i * 2_654_435_761) % 2**64:08}", "session": f"s-{(i * 0x9E3779B97F4A7C15) % 2**64:016x}"}
    for name in extra:
        e[name] = i
    return e


def as_json(e):
    ts = datetime.datetime.fromtimestamp(e["ts"] / 1e6, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(dict(e, ts=ts), separators=(",", ":")).encode()


def avro_schema(extra=()):
    fields = [
        {"name": "id", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "user_id", "type": "string"},
        {"name": "event_type", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "page", "type": "string"},
        {"name": "session", "type": "string"},
    ] + [{"name": n, "type": ["null", "long"], "default": None} for n in extra]
    return json.dumps({"type": "record", "name": "Click", "namespace": "bench", "fields": fields})


SCHEMA = """      schema:
        - {name: id, type: long, required: true}
        - {name: ts, type: timestamptz}
        - {name: user_id, type: string}
        - {name: event_type, type: string}
        - {name: amount, type: double}
        - {name: page, type: string}
        - {name: session, type: string}
"""


def spec(bootstrap, registry, work, topic, fmt, interval):
    if fmt == "avro":
        format_ = f"  format:\n    type: avro\n    registry:\n      url: {registry}\n"
        create = "    createTable: {}\n"  # the columns come from the registry
    else:
        format_ = "  format:\n    type: json\n"
        create = "    createTable:\n" + SCHEMA
    return f"""apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: formats
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
      topics: [{topic}]
{format_}  sink:
    catalog:
      type: sql
      uri: sqlite://{work}/catalog.db
      warehouse: {work}/warehouse
    table: bench.{topic.replace('-', '_')}
{create}    writeProperties:
      write.parquet.compression-codec: zstd
  checkpoint:
    interval: {interval}
  parallelism: 1
"""


class Producer:
    """JSON or Avro (Confluent framing, schema registered under `<topic>-value`)."""

    def __init__(self, bootstrap, registry, topic, fmt):
        from confluent_kafka import Producer as KafkaProducer
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
        self.producer = KafkaProducer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000})
        self.topic, self.fmt, self.registry = topic, fmt, registry
        self.use([])

    def use(self, extra):
        self.extra = list(extra)
        if self.fmt == "avro":
            from confluent_kafka.schema_registry import SchemaRegistryClient
            from confluent_kafka.schema_registry.avro import AvroSerializer
            from confluent_kafka.serialization import MessageField, SerializationContext

            ser = AvroSerializer(SchemaRegistryClient({"url": self.registry}), avro_schema(self.extra), conf={"auto.register.schemas": True})
            ctx = SerializationContext(self.topic, MessageField.VALUE)
            self.encode = lambda e: ser(e, ctx)
        else:
            self.encode = as_json

    def send(self, i):
        while True:
            try:
                self.producer.produce(self.topic, value=self.encode(event(i, self.extra)), partition=0)
                return
            except BufferError:
                self.producer.poll(0.1)

    def flush(self):
        if self.producer.flush(60):
            raise SystemExit("records not delivered")


def throughput(args, bootstrap, registry, work, fmt):
    topic = f"t-{fmt}"
    p = Producer(bootstrap, registry, topic, fmt)
    t = time.monotonic()
    for i in range(args.events):
        p.send(i)
    p.flush()
    produce_s = time.monotonic() - t
    w = work / topic
    w.mkdir()
    path = w / "spec.yaml"
    path.write_text(spec(bootstrap, registry, w, topic, fmt, "10s"))
    r = run_tidewater(args.bin, path, args.events, w / "run.log", timeout=1800)
    r["produce_s"] = produce_s
    r["record_bytes"] = len(p.encode(event(12345)))
    out = subprocess.run([str(PY), str(ROOT / "e2e/readers/inspect_tables.py"), "--catalog-uri", f"sqlite://{w}/catalog.db", "--warehouse", f"file://{w}/warehouse", "--readers", "duckdb"], check=True, capture_output=True, text=True)
    table = json.loads(out.stdout)["tables"][f"bench.{topic.replace('-', '_')}"]
    r["duckdb_rows"], r["duckdb_distinct"] = table["duckdb"]["rows"], table["duckdb"]["distinct"]
    return r


def committed_with(table, name):
    """Whether the table's current snapshot was written with a schema that has column `name`."""
    snap = table.current_snapshot()
    if snap is None:
        return False
    schema = table.schemas().get(snap.schema_id) if snap.schema_id is not None else table.schema()
    return schema is not None and any(f.name == name for f in schema.fields)


def freshness(args, bootstrap, registry, work, fmt):
    from inspect_table import pyiceberg_catalog

    topic = f"f-{fmt}"
    w = work / topic
    w.mkdir()
    p = Producer(bootstrap, registry, topic, fmt)
    stop = threading.Event()
    sent = [0]
    lock = threading.Lock()

    def feed():
        period = 1.0 / args.fresh_rate
        next_at = time.monotonic()
        while not stop.is_set():
            with lock:
                p.send(sent[0])
                sent[0] += 1
            p.producer.poll(0)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(1.0)
    path = w / "spec.yaml"
    path.write_text(spec(bootstrap, registry, w, topic, fmt, args.fresh_interval))
    port = free_port()
    env = dict(os.environ, RUST_LOG="info,sqlx=warn,iceberg=warn,opendal=warn")
    log = open(w / "run.log", "w")
    proc = subprocess.Popen([str(args.bin / "tidewater"), "run", "-f", str(path), "--metrics-addr", f"127.0.0.1:{port}", "--log-format", "json"], stderr=log, stdout=subprocess.DEVNULL, env=env)
    samples = []
    try:
        deadline = time.monotonic() + 120
        while (metric(port, "tidewater_rows_committed_total") or 0) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pipeline did not commit; see {w / 'run.log'}")
            time.sleep(0.1)
        catalog = pyiceberg_catalog("tidewater", f"sqlite://{w}/catalog.db", f"file://{w}/warehouse")
        ident = ("bench", topic.replace("-", "_"))
        for k in range(1, args.fresh_changes + 1):
            time.sleep(3.0)
            name = f"extra_{k}"
            with lock:
                p.use(p.extra + [name])  # every later record carries the field
                p.send(sent[0])
                sent[0] += 1
                p.flush()
                t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"pipeline exited; see {w / 'run.log'}")
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"column {name} not committed within 60 s")
                if committed_with(catalog.load_table(ident), name):
                    samples.append(time.monotonic() - t0)
                    break
                time.sleep(0.05)
    finally:
        stop.set()
        feeder.join()
        p.producer.flush(30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    return {"seconds": samples, "interval": args.fresh_interval, "rate": args.fresh_rate}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--fresh-rate", type=int, default=2000, help="events per second while measuring schema-change freshness")
    ap.add_argument("--fresh-interval", default="2s")
    ap.add_argument("--fresh-changes", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tw-formats-"))
    broker, bootstrap = start_broker()
    reg_port = free_port()
    registry_proc = subprocess.Popen([str(PY), str(ROOT / "e2e/servers/schema_registry.py"), "--port", str(reg_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    registry = f"http://127.0.0.1:{reg_port}"
    results = {"events": args.events, "throughput": {}, "freshness": {}}
    try:
        time.sleep(1.5)
        for fmt in ["json", "avro"]:
            results["throughput"][fmt] = throughput(args, bootstrap, registry, work, fmt)
        for fmt in ["json", "avro"]:
            results["freshness"][fmt] = freshness(args, bootstrap, registry, work, fmt)
    finally:
        registry_proc.terminate()
        registry_proc.wait()
        broker.terminate()
        broker.wait()

    rate = lambda r: r["rows"] / r["cpu_s"]
    j = results["throughput"]["json"]
    lines = [
        f"{args.events:,} click events per format (the same values), one partition, parallelism 1, checkpoint 10s, Tansu memory broker",
        "",
        "| format | record bytes | rows per CPU-second | vs JSON | peak RSS MB | DuckDB rows (distinct) |",
        "|---|---|---|---|---|---|",
    ]
    for fmt, r in results["throughput"].items():
        lines.append(f"| {fmt} | {r['record_bytes']} | {rate(r):,.0f} | {rate(r) / rate(j):.0%} | {r['peak_rss_mb']:.0f} | {r['duckdb_rows']:,} ({r['duckdb_distinct']:,}) |")
    lines += ["", f"New field → column in a committed snapshot ({args.fresh_rate} events/s, checkpoint {args.fresh_interval}, {args.fresh_changes} changes each)", "", "| format | seconds (each change) |", "|---|---|"]
    for fmt, r in results["freshness"].items():
        lines.append(f"| {fmt} | {', '.join(f'{s:.2f}' for s in r['seconds'])} |")
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "formats.json").write_text(json.dumps(results, indent=2))
    (out / "formats.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
