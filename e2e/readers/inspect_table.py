"""Independent readers for Tidewater's tests: count what an Iceberg table holds.

Reads the table through PyIceberg (SqlCatalog on the same catalog database) and through
DuckDB's iceberg extension (on the metadata file PyIceberg resolves), and prints one JSON
object: {"pyiceberg": {...}, "duckdb": {...}, "snapshots": [...]}. Exit 3 if the table
does not exist.
"""
import argparse
import glob
import json
import os
import sys


def pyiceberg_catalog(name, uri, warehouse):
    from pyiceberg.catalog.sql import SqlCatalog

    if uri.startswith("sqlite://"):
        path = uri[len("sqlite://"):].split("?")[0]
        uri = "sqlite:///" + path.lstrip("/") if not path.startswith("/") else "sqlite:///" + path
    elif uri.startswith("postgres://") or uri.startswith("postgresql://"):
        uri = "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return SqlCatalog(name, uri=uri, warehouse=warehouse)


def rest_catalog(name, uri, warehouse, token, s3, credential=None, ca_file=None):
    from pyiceberg.catalog.rest import RestCatalog

    props = {"uri": uri, "warehouse": warehouse, **s3}
    if token:
        props["token"] = token
    if credential:
        props["credential"] = credential
    if ca_file:
        # requests (under PyIceberg's REST client) trusts this bundle for the catalog's https.
        os.environ["REQUESTS_CA_BUNDLE"] = ca_file
    return RestCatalog(name, **props)


def s3_props(args):
    if not args.s3_endpoint:
        return {}
    return {"s3.endpoint": args.s3_endpoint, "s3.access-key-id": args.s3_key_id, "s3.secret-access-key": args.s3_secret, "s3.region": "us-east-1", "s3.path-style-access": "true"}


def duckdb_connection(args):
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    pkgs = [duckdb_extension_avro, duckdb_extension_iceberg]
    if args.s3_endpoint:
        import duckdb_extension_httpfs

        pkgs.insert(0, duckdb_extension_httpfs)
    for pkg in pkgs:
        base = os.path.dirname(pkg.__file__)
        (path,) = glob.glob(os.path.join(base, "extensions", "*", "*.duckdb_extension"))
        con.execute(f"LOAD '{path}'")
    if args.s3_endpoint:
        endpoint = args.s3_endpoint.split("://", 1)[1]
        con.execute(f"CREATE SECRET moto (TYPE s3, KEY_ID '{args.s3_key_id}', SECRET '{args.s3_secret}', ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
    return con


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog-name", default="tidewater")
    ap.add_argument("--catalog-type", default="sql", choices=["sql", "rest"])
    ap.add_argument("--catalog-uri", required=True)
    ap.add_argument("--token")
    ap.add_argument("--credential", help="OAuth2 client id:secret")
    ap.add_argument("--ca-file")
    ap.add_argument("--s3-endpoint")
    ap.add_argument("--s3-key-id")
    ap.add_argument("--s3-secret")
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--readers", default="pyiceberg,duckdb")
    ap.add_argument("--sample", type=int, default=0, help="also return N rows (DuckDB)")
    ap.add_argument("--files", action="store_true", help="also list the live data files with their Parquet codec")
    args = ap.parse_args()

    if args.catalog_type == "rest":
        catalog = rest_catalog(args.catalog_name, args.catalog_uri, args.warehouse, args.token, s3_props(args), args.credential, args.ca_file)
    else:
        catalog = pyiceberg_catalog(args.catalog_name, args.catalog_uri, args.warehouse)
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(args.table)
    except NoSuchTableError:
        print(json.dumps({"error": "no such table"}))
        sys.exit(3)

    out = {"metadata_location": table.metadata_location, "snapshots": []}
    for snap in table.snapshots():
        summary = snap.summary
        props = dict(summary.additional_properties) if summary else {}
        out["snapshots"].append({"snapshot_id": snap.snapshot_id, "parent": snap.parent_snapshot_id, "sequence_number": snap.sequence_number, "timestamp_ms": snap.timestamp_ms, "operation": str(summary.operation) if summary else None, "properties": props})
    out["snapshots"].sort(key=lambda s: s["sequence_number"])
    readers = args.readers.split(",")
    if "pyiceberg" in readers:
        arrow = table.scan(selected_fields=(args.id_column,)).to_arrow()
        ids = arrow.column(args.id_column).to_pylist()
        out["pyiceberg"] = {"rows": len(ids), "distinct": len(set(ids)), "nulls": sum(1 for i in ids if i is None)}
    if "duckdb" in readers:
        con = duckdb_connection(args)
        loc = table.metadata_location
        rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT {args.id_column}) FROM iceberg_scan('{loc}')").fetchone()
        out["duckdb"] = {"rows": rows, "distinct": distinct}
        if args.sample:
            cur = con.execute(f"SELECT * FROM iceberg_scan('{loc}') ORDER BY {args.id_column} LIMIT {args.sample}")
            cols = [d[0] for d in cur.description]
            out["sample"] = [dict(zip(cols, [str(v) for v in row])) for row in cur.fetchall()]
    if args.files:
        import pyarrow.parquet as pq

        out["files"] = []
        files = table.inspect.files()
        for row in files.select(["file_path", "partition", "file_size_in_bytes", "content"]).to_pylist():
            if row["content"] != 0:
                continue
            path = row["file_path"]
            with table.io.new_input(path).open() as f:
                meta = pq.ParquetFile(f).metadata
                codec = meta.row_group(0).column(0).compression if meta.num_row_groups else None
            out["files"].append({
                "path": path,
                "codec": codec,
                "partition": json.dumps(row["partition"], sort_keys=True, default=str),
                "size": row["file_size_in_bytes"],
            })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
