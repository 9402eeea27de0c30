"""An Iceberg REST catalog for Tidewater's tests, on top of PyIceberg's SqlCatalog.

No REST catalog server is installable offline here, so this one implements the parts of the
Iceberg REST protocol a writer uses (config, OAuth2 client-credentials tokens, namespaces,
create/load/commit/drop table) with the Python standard library; PyIceberg's SqlCatalog does
the catalog work (optimistic commits with requirement checks) and writes the metadata files to
the warehouse (local or S3). Listens on 127.0.0.1 only.

Auth: with --token, every /v1 request except config and oauth needs `Authorization: Bearer
<token>`; with --client-id/--client-secret, POST /v1/oauth/tokens exchanges them for a token.
--fail-after-commit N answers every N-th successful commit with HTTP 500 ("commit state
unknown") although the commit landed, to test writers' recovery.
"""
import argparse
import json
import secrets
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.rest import TableResponse
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
from pyiceberg.transforms import parse_transform

LOCK = threading.Lock()


def partition_spec(unbound):
    """A create request's partition spec may omit field ids (an unbound spec)."""
    if not unbound or not unbound.get("fields"):
        return UNPARTITIONED_PARTITION_SPEC
    fields = [
        PartitionField(source_id=f["source-id"], field_id=f.get("field-id", 1000 + i), transform=parse_transform(f["transform"]), name=f["name"])
        for i, f in enumerate(unbound["fields"])
    ]
    return PartitionSpec(*fields, spec_id=unbound.get("spec-id", 0))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tidewater-test-rest-catalog"

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            sys.stderr.write("%s\n" % (fmt % args))

    # --- plumbing -------------------------------------------------------------------------
    def reply(self, code, body=None):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def error(self, code, kind, message):
        self.reply(code, {"error": {"message": message, "type": kind, "code": code}})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorized(self):
        token = self.server.token
        if token is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self.error(401, "NotAuthorizedException", "missing or wrong bearer token")
        return False

    def parts(self):
        path = urllib.parse.urlparse(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    @staticmethod
    def namespace(encoded):
        return tuple(encoded.split("\x1f"))

    def dispatch(self, method):
        p = self.parts()
        if p[:1] != ["v1"]:
            return self.error(404, "NotFoundException", f"no route {self.path}")
        p = p[1:]
        if p == ["config"] and method == "GET":
            return self.reply(200, {"defaults": {}, "overrides": {}})
        if p == ["oauth", "tokens"] and method == "POST":
            return self.oauth()
        if not self.authorized():
            return None
        catalog = self.server.catalog
        try:
            with LOCK:
                return self.route(catalog, method, p)
        except NoSuchNamespaceError as e:
            return self.error(404, "NoSuchNamespaceException", str(e))
        except NoSuchTableError as e:
            return self.error(404, "NoSuchTableException", str(e))
        except (NamespaceAlreadyExistsError, TableAlreadyExistsError) as e:
            return self.error(409, "AlreadyExistsException", str(e))
        except CommitFailedException as e:
            return self.error(409, "CommitFailedException", str(e))
        except Exception as e:  # a bug here must reach the client as an answer, not a hang-up
            import traceback

            traceback.print_exc()
            return self.error(500, type(e).__name__, str(e))

    def route(self, catalog, method, p):
        if p == ["namespaces"]:
            if method == "GET":
                return self.reply(200, {"namespaces": [list(n) for n in catalog.list_namespaces()]})
            if method == "POST":
                req = json.loads(self.body())
                catalog.create_namespace(tuple(req["namespace"]), req.get("properties") or {})
                return self.reply(200, {"namespace": req["namespace"], "properties": req.get("properties") or {}})
        if len(p) == 2 and p[0] == "namespaces":
            ns = self.namespace(p[1])
            if method in ("GET", "HEAD"):
                props = catalog.load_namespace_properties(ns)
                return self.reply(200, {"namespace": list(ns), "properties": props}) if method == "GET" else self.reply(204)
        if len(p) == 3 and p[0] == "namespaces" and p[2] == "tables":
            ns = self.namespace(p[1])
            if method == "GET":
                ids = [{"namespace": list(t[:-1]), "name": t[-1]} for t in catalog.list_tables(ns)]
                return self.reply(200, {"identifiers": ids})
            if method == "POST":
                req = json.loads(self.body())
                table = catalog.create_table(
                    ns + (req["name"],),
                    schema=Schema.model_validate(req["schema"]),
                    location=req.get("location"),
                    partition_spec=partition_spec(req.get("partition-spec")),
                    sort_order=SortOrder.model_validate(req["write-order"]) if req.get("write-order") else UNSORTED_SORT_ORDER,
                    properties=req.get("properties") or {},
                )
                return self.table_response(table)
        if len(p) == 4 and p[0] == "namespaces" and p[2] == "tables":
            ident = self.namespace(p[1]) + (p[3],)
            if method in ("GET", "HEAD"):
                table = catalog.load_table(ident)
                return self.table_response(table) if method == "GET" else self.reply(204)
            if method == "POST":
                req = CommitTableRequest.model_validate_json(self.body())
                table = catalog.load_table(ident)
                resp = catalog.commit_table(table, req.requirements, req.updates)
                self.server.commits += 1
                every = self.server.fail_after_commit
                if every and self.server.commits % every == 0:
                    print(f"injected failure after commit {self.server.commits}", file=sys.stderr, flush=True)
                    return self.error(500, "ServerError", "injected failure after a successful commit")
                return self.reply(200, resp.model_dump_json(by_alias=True, exclude_none=True).encode())
            if method == "DELETE":
                catalog.drop_table(ident)
                return self.reply(204)
        return self.error(404, "NotFoundException", f"no route {method} {self.path}")

    def table_response(self, table):
        resp = TableResponse(**{"metadata-location": table.metadata_location, "metadata": table.metadata, "config": {}})
        return self.reply(200, resp.model_dump_json(by_alias=True, exclude_none=True).encode())

    def oauth(self):
        form = urllib.parse.parse_qs(self.body().decode())
        cid, secret = self.server.client
        if cid is None:
            return self.error(400, "BadRequestException", "this server has no OAuth2 clients")
        if form.get("grant_type") != ["client_credentials"] or form.get("client_id") != [cid] or form.get("client_secret") != [secret]:
            return self.reply(401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"})
        return self.reply(200, {"access_token": self.server.token, "token_type": "bearer", "expires_in": 3600, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--catalog-uri", required=True, help="SQLAlchemy URI of the backing SqlCatalog")
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--prop", action="append", default=[], help="k=v file IO property (s3.endpoint ...)")
    ap.add_argument("--token")
    ap.add_argument("--client-id")
    ap.add_argument("--client-secret")
    ap.add_argument("--fail-after-commit", type=int, default=0)
    ap.add_argument("--tls-cert", help="serve https with this PEM certificate chain")
    ap.add_argument("--tls-key")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    props = dict(p.split("=", 1) for p in args.prop)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.catalog = SqlCatalog("tidewater", uri=args.catalog_uri, warehouse=args.warehouse, **props)
    server.token = args.token or (secrets.token_hex(16) if args.client_id else None)
    server.client = (args.client_id, args.client_secret)
    server.fail_after_commit = args.fail_after_commit
    server.commits = 0
    server.verbose = args.verbose
    if args.tls_cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
