"""Independent readers for Tidewater's multi-table tests: every table of a SQL catalog.

Lists the catalog's namespaces and tables through PyIceberg, and for each table counts rows
and distinct ids through PyIceberg and (with --readers duckdb) DuckDB's iceberg extension, and
lists its columns. Prints one JSON object: {"tables": {"ns.name": {...}}}.
"""
import argparse
import json

from inspect_table import duckdb_connection, pyiceberg_catalog


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog-name", default="tidewater")
    ap.add_argument("--catalog-uri", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--readers", default="pyiceberg,duckdb")
    ap.add_argument("--s3-endpoint")
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
            entry = {"columns": [f.name for f in fields], "types": {f.name: str(f.field_type) for f in fields}, "required": [f.name for f in fields if f.required], "snapshots": len(table.snapshots())}
            if "pyiceberg" in readers:
                arrow = table.scan().to_arrow()
                ids = arrow.column(args.id_column).to_pylist()
                entry["pyiceberg"] = {"rows": len(ids), "distinct": len(set(ids)), "ids": sorted(i for i in ids if i is not None) if len(ids) <= 100000 else None, "nonnull": {c: arrow.num_rows - arrow.column(c).null_count for c in arrow.column_names}}
            if con is not None:
                loc = table.metadata_location
                if table.current_snapshot() is None:
                    entry["duckdb"] = {"rows": 0, "distinct": 0}
                else:
                    rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT {args.id_column}) FROM iceberg_scan('{loc}')").fetchone()
                    names = [f.name for f in fields]
                    counts = con.execute("SELECT " + ", ".join(f'count("{n}")' for n in names) + f" FROM iceberg_scan('{loc}')").fetchone()
                    entry["duckdb"] = {"rows": rows, "distinct": distinct, "nonnull": dict(zip(names, counts))}
            out[name] = entry
    print(json.dumps({"tables": out}))


if __name__ == "__main__":
    main()
