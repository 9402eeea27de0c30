"""Freshness of committed rows: snapshot commit time minus the row's produce time (`ts`).

Every data file belongs to the snapshot that added it (manifest entries); each row's `ts` is
the time the producer created it. Prints {"rows": N, "p50_s": .., "p99_s": .., "max_s": ..}.
"""
import argparse
import json
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "e2e" / "readers"))
from inspect_table import pyiceberg_catalog  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog-uri", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--table", required=True)
    args = ap.parse_args()
    table = pyiceberg_catalog("tidewater", args.catalog_uri, args.warehouse).load_table(args.table)
    commit_ms = {s.snapshot_id: s.timestamp_ms for s in table.snapshots()}
    entries = table.inspect.entries().to_pylist()
    lags = []
    for e in entries:
        if e["status"] != 1:  # ADDED
            continue
        path = e["data_file"]["file_path"].removeprefix("file://")
        ts = pq.read_table(path, columns=["ts"]).column("ts")
        ts_ms = pc.divide(pc.cast(ts, "int64"), 1000).to_pylist()
        c = commit_ms[e["snapshot_id"]]
        lags.extend((c - t) / 1000.0 for t in ts_ms if t is not None)
    lags.sort()
    if not lags:
        print(json.dumps({"rows": 0}))
        sys.exit(1)
    q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
    print(json.dumps({"rows": len(lags), "p50_s": q(0.50), "p99_s": q(0.99), "max_s": lags[-1]}))


if __name__ == "__main__":
    main()
