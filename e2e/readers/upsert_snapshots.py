"""Independent readers for Tidewater's upsert tests: what a keyed table held after each commit.

For every snapshot of the table committed by a pipeline (found through the table's metadata
log: each commit wrote a metadata file), reads the table as of that snapshot through PyIceberg
(scan at the snapshot id) and DuckDB's iceberg extension (on that commit's metadata file),
and prints per snapshot: the offsets in its summary, the row count, the distinct keys, and a
SHA-256 over the sorted "key:version" lines — the test computes the same from its model.
With --pairs-of ID, only that snapshot's [key, version] pairs (to show a difference). Else one
JSON object:
{"snapshots": [{"snapshot_id", "offsets", "operation", "pyiceberg": {...}, "duckdb": {...}}]}.
"""
import argparse
import hashlib
import json

from inspect_table import duckdb_connection, pyiceberg_catalog, rest_catalog, s3_props


def digest(pairs):
    pairs = sorted(pairs)
    h = hashlib.sha256()
    for k, v in pairs:
        h.update(f"{k}:{v}\n".encode())
    return {"rows": len(pairs), "distinct": len({k for k, _ in pairs}), "sha256": h.hexdigest()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog-name", default="tidewater")
    ap.add_argument("--catalog-uri", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--key", default="id")
    ap.add_argument("--version", default="v")
    ap.add_argument("--readers", default="pyiceberg,duckdb")
    ap.add_argument("--catalog-type", default="sql", choices=["sql", "rest"])
    ap.add_argument("--token")
    ap.add_argument("--s3-endpoint")
    ap.add_argument("--s3-key-id")
    ap.add_argument("--s3-secret")
    ap.add_argument("--pairs-of", type=int, help="print only this snapshot's [key, version] pairs (PyIceberg)")
    args = ap.parse_args()
    from pyiceberg.table import StaticTable

    if args.catalog_type == "rest":
        catalog = rest_catalog(args.catalog_name, args.catalog_uri, args.warehouse, args.token, s3_props(args))
    else:
        catalog = pyiceberg_catalog(args.catalog_name, args.catalog_uri, args.warehouse)
    table = catalog.load_table(args.table)
    if args.pairs_of is not None:
        arrow = table.scan(snapshot_id=args.pairs_of, selected_fields=(args.key, args.version)).to_arrow()
        print(json.dumps(sorted(zip(arrow.column(args.key).to_pylist(), arrow.column(args.version).to_pylist()))))
        return
    readers = args.readers.split(",")
    con = duckdb_connection(args) if "duckdb" in readers else None
    files = [e.metadata_file for e in table.metadata.metadata_log] + [table.metadata_location]
    out, seen = [], set()
    for path in files:
        static = StaticTable.from_metadata(path, properties=s3_props(args))
        snap = static.current_snapshot()
        if snap is None or snap.snapshot_id in seen:
            continue
        seen.add(snap.snapshot_id)
        props = snap.summary.additional_properties if snap.summary else {}
        if "tidewater.offsets" not in props:
            continue
        entry = {"snapshot_id": snap.snapshot_id, "offsets": json.loads(props["tidewater.offsets"]), "operation": snap.summary.operation.value, "delete_files": int(props.get("total-delete-files", 0))}
        if "pyiceberg" in readers:
            arrow = table.scan(snapshot_id=snap.snapshot_id, selected_fields=(args.key, args.version)).to_arrow()
            pairs = list(zip(arrow.column(args.key).to_pylist(), arrow.column(args.version).to_pylist()))
            entry["pyiceberg"] = digest(pairs)
        if con is not None:
            pairs = con.execute(f'SELECT "{args.key}", "{args.version}" FROM iceberg_scan(\'{path}\')').fetchall()
            entry["duckdb"] = digest(pairs)
        out.append(entry)
    print(json.dumps({"snapshots": out}))


if __name__ == "__main__":
    main()
