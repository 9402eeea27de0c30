"""Independent readers for Tidewater's multi-table tests: every table of a SQL catalog.

Lists the catalog's namespaces and tables through PyIceberg, and for each table counts rows
and distinct ids through PyIceberg and (with --readers duckdb) DuckDB's iceberg extension, and
lists its columns. With --rows N, also the first N rows by id as each reader returns them,
normalized to JSON (maps as objects, decimals as strings, timestamps as UTC ISO 8601, UUIDs as
text), so nested values can be compared across readers. Prints one JSON object:
{"tables": {"ns.name": {...}}}.
"""
import argparse
import datetime
import decimal
import json
import uuid

from inspect_table import duckdb_connection, pyiceberg_catalog


def normalize(v):
    """One value as comparable JSON, whichever reader returned it."""
    if isinstance(v, dict):
        return {str(k): normalize(x) for k, x in sorted(v.items())}
    if isinstance(v, list) and v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        return {str(k): normalize(x) for k, x in sorted(v)}  # a pyarrow map
    if isinstance(v, (list, tuple)):
        return [normalize(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return v.isoformat()
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        return str(uuid.UUID(bytes=v)) if len(v) == 16 else v.hex()
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog-name", default="tidewater")
    ap.add_argument("--catalog-uri", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--readers", default="pyiceberg,duckdb")
    ap.add_argument("--s3-endpoint")
    ap.add_argument("--rows", type=int, default=0, help="also return the first N rows by id")
    args = ap.parse_args()
    catalog = pyiceberg_catalog(args.catalog_name, args.catalog_uri, args.warehouse)
    readers = args.readers.split(",")
    con = duckdb_connection(args) if "duckdb" in readers else None
    out = {}
    for ns in catalog.list_namespaces():
        for ident in catalog.list_tables(ns):
            table = catalog.load_table(ident)
            name = ".".join(ident)
            fields = table.schema().fields
            entry = {"columns": [f.name for f in fields], "types": {f.name: str(f.field_type) for f in fields}, "required": [f.name for f in fields if f.required], "snapshots": len(table.snapshots()), "format_version": table.format_version, "sort_order": [f"{table.schema().find_column_name(f.source_id)} {f.transform} {f.direction.value} {f.null_order.value}" for f in table.sort_order().fields]}
            if "pyiceberg" in readers:
                arrow = table.scan().to_arrow()
                ids = arrow.column(args.id_column).to_pylist()
                entry["pyiceberg"] = {"rows": len(ids), "distinct": len(set(ids)), "ids": sorted(i for i in ids if i is not None) if len(ids) <= 100000 else None, "nonnull": {c: arrow.num_rows - arrow.column(c).null_count for c in arrow.column_names}}
                if args.rows:
                    first = arrow.sort_by(args.id_column).slice(0, args.rows).to_pylist()
                    entry["pyiceberg"]["first"] = [normalize(r) for r in first]
            if con is not None:
                loc = table.metadata_location
                if table.current_snapshot() is None:
                    entry["duckdb"] = {"rows": 0, "distinct": 0}
                else:
                    rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT {args.id_column}) FROM iceberg_scan('{loc}')").fetchone()
                    names = [f.name for f in fields]
                    counts = con.execute("SELECT " + ", ".join(f'count("{n}")' for n in names) + f" FROM iceberg_scan('{loc}')").fetchone()
                    entry["duckdb"] = {"rows": rows, "distinct": distinct, "nonnull": dict(zip(names, counts))}
                    if args.rows:
                        cur = con.execute(f"SELECT * FROM iceberg_scan('{loc}') ORDER BY {args.id_column} LIMIT {args.rows}")
                        cols = [d[0] for d in cur.description]
                        entry["duckdb"]["first"] = [normalize(dict(zip(cols, r))) for r in cur.fetchall()]
            out[name] = entry
    print(json.dumps({"tables": out}))


if __name__ == "__main__":
    main()
