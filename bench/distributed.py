"""Tidewater distributed-runtime benchmark (coordinator and worker processes) on one machine.

Measures, in one run against a local Tansu broker, SQLite catalog and local warehouse:
  * drain throughput of N pre-produced events with 1 and 2 worker processes, CPU-normalised
    over all tidewater processes (coordinator + workers), next to `tidewater run` with one
    in-process worker on the same data;
  * with a steady producer and 3 workers: checkpoint latency; the pause of a rescale
    (3 → 2 → 3: barrier → new owner told, and new owner told → its first record); recovery
    time after `kill -9` of a worker (until every partition it owned has committed progress)
    and of the coordinator (restart on the same address until the first new commit).
Prints a Markdown report and writes bench/results/distributed.json.
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

from bench import ROOT, PY, free_port, metric, pct, proc_cpu, spec_yaml, start_broker

HEARTBEAT = "3s"


def http(port, method, path, body=None):
    data = b"" if body is None else json.dumps(body).encode()
    req = f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(req)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
    except OSError:
        return 0, None
    head, _, body = out.partition(b"\r\n\r\n")
    code = int(head.split()[1]) if head else 0
    try:
        return code, json.loads(body)
    except ValueError:
        return code, None


def status(port):
    code, doc = http(port, "GET", "/v1/status")
    return doc if code == 200 else None


class Procs:
    def __init__(self, bins, work):
        self.bins, self.work, self.all = bins, work, []

    def start(self, args, log, port):
        env = dict(os.environ, RUST_LOG="info,sqlx=warn,iceberg=warn,opendal=warn")
        f = open(self.work / log, "a")
        p = subprocess.Popen([str(self.bins / "tidewater"), "--log-format", "json", *args], stdout=subprocess.DEVNULL, stderr=f, env=env)
        self.all.append(p)
        return p

    def coordinator(self, spec, port, extra=()):
        return self.start(["coordinator", "-f", str(spec), "--listen", f"127.0.0.1:{port}", "--heartbeat-timeout", HEARTBEAT, *extra], "coordinator.log", port)

    def worker(self, cport, name):
        mport = free_port()
        p = self.start(["worker", "--coordinator", f"http://127.0.0.1:{cport}", "--name", name, "--metrics-addr", f"127.0.0.1:{mport}"], f"{name}.log", mport)
        p.metrics_port = mport
        return p

    def stop_all(self):
        for p in self.all:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.all:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def wait(what, pred, timeout=120, every=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def owning(doc, n):
    if not doc:
        return False
    owners = {p.get("worker") for p in doc["partitions"]}
    return None not in owners and len(owners) == n


def log_events(path, message):
    out = []
    if not path.exists():
        return out
    for line in open(path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {})
        if f.get("message") == message:
            out.append(f)
    return out


def drain(bins, work, bootstrap, events, workers):
    """Coordinator + `workers` worker processes drain the pre-produced topic."""
    d = work / f"drain{workers}"
    d.mkdir()
    spec = d / "p.yaml"
    spec.write_text(spec_yaml(bootstrap, "bench", d, workers, "10s"))
    procs = Procs(bins, d)
    cport = free_port()
    t0 = time.monotonic()
    c = procs.coordinator(spec, cport)
    ws = [procs.worker(cport, f"w{i}") for i in range(workers)]
    everyone = [c, *ws]
    ingested_at, cpu = None, 0.0
    while time.monotonic() - t0 < 900:
        time.sleep(0.05)
        cpu = sum(proc_cpu(p.pid) for p in everyone)
        got = sum(metric(w.metrics_port, "tidewater_records_in_total") or 0 for w in ws)
        if got >= events:
            ingested_at = time.monotonic()
            break
    committed = wait("commit", lambda: (metric(cport, "tidewater_rows_committed_total") or 0) >= events, timeout=120)
    procs.stop_all()
    return {"workers": workers, "wall_s": ingested_at - t0, "cpu_s": cpu, "rows": events, "committed": bool(committed)}


def local_p1(bins, work, bootstrap, events):
    d = work / "local1"
    d.mkdir()
    spec = d / "p.yaml"
    spec.write_text(spec_yaml(bootstrap, "bench", d, 1, "10s"))
    port = free_port()
    t0 = time.monotonic()
    p = subprocess.Popen([str(bins / "tidewater"), "run", "-f", str(spec), "--metrics-addr", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = 0.0
    while True:
        time.sleep(0.05)
        cpu = proc_cpu(p.pid)
        if (metric(port, "tidewater_records_in_total") or 0) >= events:
            break
    wall = time.monotonic() - t0
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    return {"workers": 1, "wall_s": wall, "cpu_s": cpu, "rows": events}


def steady(bins, work, bootstrap, rate, seconds, kills):
    d = work / "steady"
    d.mkdir()
    spec = d / "p.yaml"
    spec.write_text(spec_yaml(bootstrap, "steady", d, 3, "2s"))
    subprocess.run([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "steady", "--partitions", "6", "--count", "0"], check=True, capture_output=True)
    total = rate * seconds
    producer = subprocess.Popen([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "steady", "--partitions", "6", "--count", str(total), "--rate", str(rate)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    procs = Procs(bins, d)
    cport = free_port()
    c = procs.coordinator(spec, cport)
    ws = {f"w{i}": procs.worker(cport, f"w{i}") for i in range(3)}
    wait("3 workers", lambda: owning(status(cport), 3))
    out = {}
    time.sleep(20)
    ck = [float(f["ms"]) for f in log_events(d / "coordinator.log", "checkpoint complete")]
    out["checkpoint_ms_3_workers"] = {"p50": pct(ck, 0.5), "p99": pct(ck, 0.99), "n": len(ck)}

    # Rescale 3 → 2 → 3.
    http(cport, "POST", "/v1/parallelism", {"workers": 2})
    ws["w2"].send_signal(signal.SIGTERM)
    wait("2 workers", lambda: owning(status(cport), 2))
    ws["w2"].wait(timeout=60)
    time.sleep(4)
    ws["w2"] = procs.worker(cport, "w2")
    http(cport, "POST", "/v1/parallelism", {"workers": 3})
    wait("3 workers again", lambda: owning(status(cport), 3))
    time.sleep(4)
    moves = [float(f["pause_ms"]) for f in log_events(d / "coordinator.log", "partitions moved")]
    firsts = []
    for name in ws:
        firsts += [float(f["ms"]) for f in log_events(d / f"{name}.log", "first record after assignment")]
    out["rescale"] = {"barrier_to_assign_ms": moves, "assign_to_first_record_ms": sorted(firsts)}

    # Worker kills: time until every partition the worker owned has committed progress.
    worker_recovery = []
    names = list(ws)
    for k in range(kills):
        victim = names[k % len(names)]
        doc = status(cport)
        victim_id = next(w["id"] for w in doc["workers"] if w["name"] == victim and w["partitions"])
        before = {(p["topic"], p["partition"]): p["offset"] for p in doc["partitions"] if p.get("worker") == victim_id}
        t0 = time.monotonic()
        ws[victim].kill()
        ws[victim].wait()

        def progressed():
            d2 = status(cport)
            if not d2:
                return False
            now = {(p["topic"], p["partition"]): p["offset"] for p in d2["partitions"]}
            return all(now.get(tp, -1) > off for tp, off in before.items())

        wait("recovery after worker kill", progressed, timeout=120)
        worker_recovery.append(time.monotonic() - t0)
        ws[victim] = procs.worker(cport, victim)
        wait("workers back", lambda: owning(status(cport), 3))
        time.sleep(3)
    out["worker_kill_recovery_s"] = worker_recovery

    # Coordinator kills: restart on the same address, time to its first commit.
    coord_recovery, coord_ready = [], []
    for _ in range(kills):
        t0 = time.monotonic()
        c.kill()
        c.wait()
        c = procs.coordinator(spec, cport)
        wait("coordinator ready", lambda: http(cport, "GET", "/readyz")[0] == 200, timeout=120, every=0.02)
        coord_ready.append(time.monotonic() - t0)
        wait("first commit of the new run", lambda: ((status(cport) or {}).get("lastCheckpoint") or {}).get("snapshots"), timeout=120, every=0.02)
        coord_recovery.append(time.monotonic() - t0)
        wait("workers back", lambda: owning(status(cport), 3))
        time.sleep(3)
    out["coordinator_kill_ready_s"] = coord_ready
    out["coordinator_kill_first_commit_s"] = coord_recovery

    producer.wait()
    wait("everything committed", lambda: count(d) >= total, timeout=300, every=1.0)
    out["produced"] = total
    out["duckdb"] = count(d, full=True)
    procs.stop_all()
    return out


def count(d, full=False):
    readers = "pyiceberg,duckdb" if full else "pyiceberg"
    r = subprocess.run([str(PY), str(ROOT / "e2e/readers/inspect_table.py"), "--catalog-uri", f"sqlite://{d}/catalog.db", "--warehouse", f"file://{d}/warehouse", "--table", "bench.events", "--readers", readers], capture_output=True, text=True)
    if r.returncode != 0:
        return 0 if not full else None
    doc = json.loads(r.stdout)
    return doc if full else doc["pyiceberg"]["rows"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    bins = args.bin
    work = Path(tempfile.mkdtemp(prefix="tw-dbench-"))
    broker, bootstrap = start_broker()
    results = {"events": args.events}
    try:
        time.sleep(1.0)
        subprocess.run([str(bins / "tw-produce"), "--bootstrap", bootstrap, "--topic", "bench", "--partitions", "4", "--count", str(args.events)], check=True, capture_output=True)
        results["local_p1"] = local_p1(bins, work, bootstrap, args.events)
        results["drain_1"] = drain(bins, work, bootstrap, args.events, 1)
        results["drain_2"] = drain(bins, work, bootstrap, args.events, 2)
        results["steady"] = steady(bins, work, bootstrap, args.rate, args.seconds, args.kills)
    finally:
        broker.terminate()
        broker.wait()

    lines = [f"drain: {args.events} events, 4 partitions; CPU over every tidewater process", "", "| run | rows per CPU-second | wall rows/s | CPU s |", "|---|---|---|---|"]
    for key, label in (("local_p1", "`tidewater run`, 1 in-process worker"), ("drain_1", "coordinator + 1 worker process"), ("drain_2", "coordinator + 2 worker processes")):
        r = results[key]
        lines.append(f"| {label} | {r['rows'] / r['cpu_s']:,.0f} | {r['rows'] / r['wall_s']:,.0f} | {r['cpu_s']:.2f} |")
    s = results["steady"]
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    rs = s["rescale"]
    lines += [
        "",
        f"steady {args.rate:,} events/s, 6 partitions, checkpoint 2 s, heartbeat timeout {HEARTBEAT}:",
        f"- checkpoint latency with 3 workers (barrier → durable record): p50 {s['checkpoint_ms_3_workers']['p50']:.1f} ms, p99 {s['checkpoint_ms_3_workers']['p99']:.1f} ms ({s['checkpoint_ms_3_workers']['n']} checkpoints)",
        f"- rescale 3 → 2 → 3, barrier → new owner told (ms): {fmt(rs['barrier_to_assign_ms'])}; new owner told → its first record (ms): p50 {pct(rs['assign_to_first_record_ms'], 0.5) or 0:.1f}, max {max(rs['assign_to_first_record_ms'] or [0]):.1f} ({len(rs['assign_to_first_record_ms'])} partitions)",
        f"- worker kill -9 → every partition it owned has committed progress (s): {fmt(s['worker_kill_recovery_s'])}",
        f"- coordinator kill -9 → restarted and ready (s): {fmt(s['coordinator_kill_ready_s'])}; → first new commit (s): {fmt(s['coordinator_kill_first_commit_s'])}",
        f"- exactly-once check: produced {s['produced']}, PyIceberg {s['duckdb']['pyiceberg']}, DuckDB {s['duckdb']['duckdb']}",
    ]
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(results, indent=2))
    (out / "distributed.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
