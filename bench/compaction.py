"""Tidewater compaction benchmark: bin-pack throughput on >= 2 GB of small files.

Writes `analytics.bench` (day-partitioned, zstd Parquet) with --files small files through
Tidewater's writer (untimed), then measures in the same run:
  * the physical limit: decode every input file and encode all rows again as one zstd(1)
    Parquet stream (`tw-bench recode`, arrow-rs only, no Iceberg);
  * `tidewater compact -f policy.yaml --once` with the given target file size: CPU seconds
    (user + system of the process), wall time, peak RSS, plan / rewrite / commit time from the
    run's report, files before and after.
Throughput is input (compressed file) MB per CPU-second, the unit of RisingWave's published
figure (193 GB in 277 s on 16 vCPU, about 43 MB/s per vCPU). Prints a Markdown report and
writes bench/results/compaction.json.
"""
import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_timed(cmd):
    """Runs cmd under /usr/bin/time; returns (stdout, cpu_s, wall_s, max_rss_kb)."""
    fmt = "TIMING %U %S %e %M"
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", fmt, *cmd], capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {p.stdout}\n{p.stderr}")
    line = [l for l in p.stderr.splitlines() if l.startswith("TIMING ")][-1]
    _, user, system, elapsed, rss = line.split()
    return p.stdout, float(user) + float(system), float(elapsed) or wall, int(rss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with release tidewater and tw-bench")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=28000, help="rows per small file (~1 MB)")
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--target", type=int, default=512 * 1024 * 1024)
    args = ap.parse_args()
    bin_dir = Path(args.bin)
    with tempfile.TemporaryDirectory(dir=str(ROOT / "bench")) as tmp:
        tmp = Path(tmp)
        catalog = f"sqlite://{tmp / 'catalog.db'}"
        wh = tmp / "wh"
        t0 = time.time()
        gen = subprocess.run(
            [str(bin_dir / "tw-bench"), "small-files", "--catalog", catalog, "--warehouse", str(wh),
             "--files", str(args.files), "--rows", str(args.rows), "--days", str(args.days)],
            capture_output=True, text=True, check=True)
        gen = json.loads(gen.stdout.strip().splitlines()[-1])
        gen_s = time.time() - t0

        out, raw_cpu, raw_wall, raw_rss = run_timed(
            [str(bin_dir / "tw-bench"), "recode", "--dir", str(wh)])
        raw = json.loads(out.strip().splitlines()[-1])

        policy = tmp / "policy.yaml"
        policy.write_text(
            "apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: bench\n"
            f"spec:\n  catalog:\n    type: sql\n    uri: {catalog}\n    warehouse: {wh}\n"
            f"  tables: [analytics.bench]\n  targetFileSizeBytes: {args.target}\n"
            "  hotPartitionGuard:\n    minAge: 0s\n")
        out, cpu, wall, rss = run_timed([str(bin_dir / "tidewater"), "compact", "-f", str(policy), "--once"])
        report = json.loads(out.strip().splitlines()[-1])
        t = report["tables"][0]
        if t.get("error"):
            raise SystemExit(f"compaction failed: {t['error']}")
        mb = t["bytesRewritten"] / 1e6
        result = {
            "input": gen, "generate_s": round(gen_s, 1),
            "raw_recode": {"mb_per_cpu_s": round(raw["bytes"] / 1e6 / raw["cpu_s"], 1),
                           "cpu_s": round(raw["cpu_s"], 2), "wall_s": round(raw_wall, 2)},
            "compaction": {
                "files_rewritten": t["filesRewritten"], "files_written": t["filesWritten"],
                "mb_rewritten": round(mb, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                "mb_per_cpu_s": round(mb / cpu, 1), "mb_per_s_wall": round(mb / wall, 1),
                "plan_ms": t["planMillis"], "rewrite_ms": t["rewriteMillis"],
                "commit_ms": t["commitMillis"], "peak_rss_mb": round(rss / 1024, 1),
            },
            "target_file_size_bytes": args.target,
        }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "compaction.json").write_text(json.dumps(result, indent=2))
    c, r = result["compaction"], result["raw_recode"]
    print(f"""## Compaction (bin-pack) on {gen['files']} files, {gen['bytes'] / 1e9:.2f} GB, {gen['rows']:,} rows

| measure | value |
|---|---|
| files rewritten → written | {c['files_rewritten']} → {c['files_written']} (target {args.target // 2**20} MiB) |
| throughput per core | **{c['mb_per_cpu_s']} MB/s per CPU-second** ({c['cpu_s']} CPU-s) |
| wall | {c['wall_s']} s ({c['mb_per_s_wall']} MB/s on 2 cores) |
| plan (read manifests, plan) | {c['plan_ms']} ms |
| rewrite | {c['rewrite_ms']} ms |
| commit (validate, manifests, swap) | {c['commit_ms']} ms |
| peak RSS | {c['peak_rss_mb']} MB |
| physical limit: arrow-rs decode + zstd(1) encode of the same files | {r['mb_per_cpu_s']} MB/s per CPU-second |
""")


if __name__ == "__main__":
    main()
