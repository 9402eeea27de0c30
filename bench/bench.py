"""Tidewater benchmark on one machine.

Produces N ~200-byte JSON events into a 4-partition topic on a local Tansu broker, then
measures in the same run:
  * the physical limits on the same data: raw rdkafka consume-and-discard and raw zstd(1)
    Parquet encode of the same rows (tw-bench);
  * tidewater (release) draining the topic with parallelism 1 and 2: rows and MB per
    CPU-second of the tidewater process, wall throughput, peak RSS, checkpoint and commit
    latency (from its log);
  * freshness while a producer runs at a steady rate: snapshot commit time minus each row's
    produce time, p50/p99 (bench/freshness.py).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv/bin/python"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metric(port, name):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def metric_sum(port, prefix):
    """The sum of every series whose name (labels included) starts with `prefix`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in data.decode().splitlines() if line.startswith(prefix)]
    return sum(values) if values else None


def start_broker():
    """A Tansu memory broker on a free port: (process, bootstrap address)."""
    bootstrap = f"127.0.0.1:{free_port()}"
    url = f"tcp://{bootstrap}"
    broker = subprocess.Popen([str(ROOT / "bin/tansu"), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return broker, bootstrap


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def spec_yaml(bootstrap, topic, work, parallelism, interval):
    return f"""apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: bench
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
      topics: [{topic}]
  format:
    type: json
  sink:
    catalog:
      type: sql
      uri: sqlite://{work}/catalog.db
      warehouse: {work}/warehouse
    table: bench.events
    createTable:
      schema:
        - {{name: id, type: long, required: true}}
        - {{name: ts, type: timestamptz}}
        - {{name: user_id, type: string}}
        - {{name: event_type, type: string}}
        - {{name: amount, type: double}}
      partitionBy: ["day(ts)"]
    writeProperties:
      write.parquet.compression-codec: zstd
  checkpoint:
    interval: {interval}
  parallelism: {parallelism}
"""


def run_tidewater(bin_dir, spec_path, expected_rows, log_path, timeout=900, during=None, scrape=()):
    port = free_port()
    env = dict(os.environ, RUST_LOG="info,sqlx=warn,iceberg=warn,opendal=warn")
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        p = subprocess.Popen([str(bin_dir / "tidewater"), "run", "-f", str(spec_path), "--metrics-addr", f"127.0.0.1:{port}", "--log-format", "json"], stderr=log, stdout=subprocess.DEVNULL, env=env)
        if during:
            during()
        hwm, cpu, done_at, ingested_at, cpu_ingested = 0.0, 0.0, None, None, None
        while time.monotonic() - t0 < timeout:
            time.sleep(0.05)
            if p.poll() is not None:
                raise SystemExit(f"tidewater exited early ({p.returncode}); see {log_path}")
            hwm = max(hwm, proc_hwm_mb(p.pid))
            cpu = proc_cpu(p.pid)
            if ingested_at is None and (metric(port, "tidewater_records_in_total") or 0) >= expected_rows:
                ingested_at, cpu_ingested = time.monotonic(), cpu
            committed = metric(port, "tidewater_rows_committed_total") or 0
            if committed >= expected_rows:
                done_at = time.monotonic()
                break
        wall = (ingested_at or time.monotonic()) - t0
        wall_committed = (done_at or time.monotonic()) - t0
        scraped = {name: metric_sum(port, name) for name in scrape}
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    checkpoints, commits = [], []
    for line in open(log_path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        fields = rec.get("fields", {})
        if fields.get("message") == "checkpoint complete":
            checkpoints.append(float(fields["ms"]))
            if fields.get("commit_ms") is not None:
                commits.append(float(fields["commit_ms"]))
    return {"wall_s": wall, "cpu_s": cpu_ingested or cpu, "wall_to_last_commit_s": wall_committed, "cpu_to_last_commit_s": cpu, "peak_rss_mb": hwm, "rows": expected_rows, "completed": done_at is not None,
            "checkpoint_ms": {"p50": pct(checkpoints, 0.5), "p99": pct(checkpoints, 0.99), "n": len(checkpoints)},
            "commit_ms": {"p50": pct(commits, 0.5), "p99": pct(commits, 0.99), "n": len(commits)}, "scraped": scraped}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--fresh-rate", type=int, default=20_000)
    ap.add_argument("--fresh-seconds", type=int, default=60)
    ap.add_argument("--fresh-interval", default="2s")
    args = ap.parse_args()
    bins = args.bin
    work = Path(tempfile.mkdtemp(prefix="tw-bench-"))
    broker, bootstrap = start_broker()
    results = {"events": args.events, "machine": {"cores": os.cpu_count()}}
    try:
        time.sleep(1.0)
        t = time.monotonic()
        subprocess.run([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "bench", "--partitions", "4", "--count", str(args.events)], check=True)
        results["produce_s"] = time.monotonic() - t
        spec1 = work / "p1.yaml"
        (work / "w1").mkdir()
        spec1.write_text(spec_yaml(bootstrap, "bench", work / "w1", 1, "10s"))

        raw = json.loads(subprocess.run([str(bins / "tw-bench"), "consume", "--bootstrap", bootstrap, "--topic", "bench", "--count", str(args.events)], check=True, capture_output=True, text=True).stdout)
        enc = json.loads(subprocess.run([str(bins / "tw-bench"), "encode", "--count", str(args.events), "--spec", str(spec1)], check=True, capture_output=True, text=True).stdout)
        results["raw_consume"] = raw
        results["raw_encode"] = enc

        results["tidewater_p1"] = run_tidewater(bins, spec1, args.events, work / "p1.log")
        spec2 = work / "p2.yaml"
        (work / "w2").mkdir()
        spec2.write_text(spec_yaml(bootstrap, "bench", work / "w2", 2, "10s"))
        results["tidewater_p2"] = run_tidewater(bins, spec2, args.events, work / "p2.log")

        # Freshness: steady producer while tidewater runs.
        (work / "w3").mkdir()
        spec3 = work / "p3.yaml"
        spec3.write_text(spec_yaml(bootstrap, "fresh", work / "w3", 1, args.fresh_interval))
        fresh_total = args.fresh_rate * args.fresh_seconds
        subprocess.run([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "fresh", "--partitions", "4", "--count", "0"], check=True, capture_output=True)
        producer = {}

        def start_producer():
            producer["p"] = subprocess.Popen([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "fresh", "--partitions", "4", "--count", str(fresh_total), "--rate", str(args.fresh_rate)], stderr=subprocess.DEVNULL)

        results["tidewater_fresh"] = run_tidewater(bins, spec3, fresh_total, work / "p3.log", during=start_producer)
        producer["p"].wait()
        fresh = subprocess.run([str(PY), str(ROOT / "bench/freshness.py"), "--catalog-uri", f"sqlite://{work}/w3/catalog.db", "--warehouse", f"file://{work}/w3/warehouse", "--table", "bench.events"], check=True, capture_output=True, text=True)
        results["freshness"] = json.loads(fresh.stdout)
        results["freshness"]["rate"] = args.fresh_rate
        results["freshness"]["interval"] = args.fresh_interval

        # Independent check of what the throughput runs wrote.
        for w in ("w1", "w2"):
            out = subprocess.run([str(PY), str(ROOT / "e2e/readers/inspect_table.py"), "--catalog-uri", f"sqlite://{work}/{w}/catalog.db", "--warehouse", f"file://{work}/{w}/warehouse", "--table", "bench.events", "--readers", "duckdb"], check=True, capture_output=True, text=True)
            results[f"check_{w}"] = json.loads(out.stdout)["duckdb"]
    finally:
        broker.terminate()
        broker.wait()

    mb = lambda b: b / 1e6
    avg_bytes = raw["bytes"] / raw["records"]
    rows = lambda r: r["rows"] / r["cpu_s"]
    raw_rate = raw["records"] / raw["cpu_s"]
    enc_rate = enc["records"] / enc["cpu_s"]
    limit = min(raw_rate, enc_rate)
    lines = [
        f"events: {args.events} JSON records, {avg_bytes:.0f} bytes average, 4 partitions, Tansu memory broker",
        "",
        "| path | rows per CPU-second | MB per CPU-second | wall rows/s | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|",
        f"| raw rdkafka consume-and-discard | {raw_rate:,.0f} | {mb(raw['bytes']) / raw['cpu_s']:.0f} | {raw['records'] / raw['wall_s']:,.0f} | {raw['cpu_s']:.2f} | |",
        f"| raw Parquet encode, zstd(1) | {enc_rate:,.0f} | {mb(enc['bytes']) / enc['cpu_s']:.0f} | {enc['records'] / enc['wall_s']:,.0f} | {enc['cpu_s']:.2f} | |",
    ]
    for key, label in (("tidewater_p1", "tidewater, parallelism 1"), ("tidewater_p2", "tidewater, parallelism 2")):
        r = results[key]
        lines.append(f"| {label} | {rows(r):,.0f} | {mb(r['rows'] * avg_bytes) / r['cpu_s']:.0f} | {r['rows'] / r['wall_s']:,.0f} | {r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    p1 = results["tidewater_p1"]
    fr = results["tidewater_fresh"]
    lines += [
        "",
        f"tidewater (parallelism 1) per CPU-second = {rows(p1) / raw_rate:.0%} of raw consume, {rows(p1) / enc_rate:.0%} of raw encode, {rows(p1) / limit:.0%} of the slower limit",
        f"checkpoint latency (barrier → durable record), steady {args.fresh_rate:,}/s run: p50 {fr['checkpoint_ms']['p50']:.1f} ms, p99 {fr['checkpoint_ms']['p99']:.1f} ms ({fr['checkpoint_ms']['n']} checkpoints); drain run: p50 {p1['checkpoint_ms']['p50']:.1f} ms over {p1['checkpoint_ms']['n']}",
        f"commit latency (Iceberg commit, SQLite catalog), steady run: p50 {fr['commit_ms']['p50']:.1f} ms, p99 {fr['commit_ms']['p99']:.1f} ms ({fr['commit_ms']['n']} commits)",
        f"freshness at {args.fresh_rate:,} events/s, checkpoint {args.fresh_interval}: p50 {results['freshness']['p50_s']:.2f} s, p99 {results['freshness']['p99_s']:.2f} s ({results['freshness']['rows']} rows)",
        f"DuckDB check: p1 {results['check_w1']}, p2 {results['check_w2']}",
    ]
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    (out / "latest.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
