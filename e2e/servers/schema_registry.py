"""A small Confluent-compatible schema registry for Tidewater's tests (no registry server can be
installed from the package registries here). State is in memory; one process per test.

Implemented subset of the Confluent Schema Registry REST API (v1, Avro only):
  GET  /subjects                                  subjects with at least one version
  POST /subjects/{subject}/versions               register {"schema": "..."} -> {"id": N}
                                                  (the same schema again returns its id;
                                                  409 when the subject's compatibility refuses it)
  POST /subjects/{subject}                        look a schema up -> {subject, id, version, schema}
  GET  /subjects/{subject}/versions               [1, 2, ...]
  GET  /subjects/{subject}/versions/{v|latest}    {subject, id, version, schema}
  GET  /schemas/ids/{id}                          {"schema": "..."}
  GET  /schemas/ids/{id}/versions                 [{subject, version}]
  GET/PUT /config, /config/{subject}              {"compatibilityLevel": X} / {"compatibility": X}
  POST /compatibility/subjects/{s}/versions/{v}   {"is_compatible": bool}
With --basic-auth USER:PASSWORD every request needs that HTTP basic authorization (else 401).
Compatibility levels: NONE, BACKWARD (default), FORWARD, FULL (and the _TRANSITIVE forms, checked
against every version). Records are compared field by field: a field read from data that lacks
it needs a default; a field present on both sides must keep its type or be promotable
(int -> long/float/double, long -> float/double, float -> double, string <-> bytes, and a union
that contains the other side's type). Errors use Confluent's codes (40401 subject not found,
40402 version not found, 40403 schema not found, 409 incompatible, 42201 invalid schema).
"""
import argparse
import base64
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"}, "string": {"bytes"}, "bytes": {"string"}}


def type_name(t):
    if isinstance(t, dict):
        if t.get("logicalType"):
            return t["type"] + ":" + t["logicalType"]
        if t["type"] in ("record", "enum", "fixed"):
            return t.get("name", t["type"])
        return t["type"]
    return t


def can_read(reader, writer):
    """Whether data written with `writer` can be read with `reader` (both parsed JSON)."""
    if isinstance(reader, list):
        return any(can_read(r, writer) for r in reader) if not isinstance(writer, list) else all(can_read(reader, w) for w in writer)
    if isinstance(writer, list):
        return all(can_read(reader, w) for w in writer)
    if isinstance(reader, dict) and reader.get("type") == "record":
        if not (isinstance(writer, dict) and writer.get("type") == "record"):
            return False
        written = {f["name"]: f for f in writer.get("fields", [])}
        for f in reader.get("fields", []):
            if f["name"] in written:
                if not can_read(f["type"], written[f["name"]]["type"]):
                    return False
            elif "default" not in f:
                return False
        return True
    if isinstance(reader, dict) and reader.get("type") == "array":
        return isinstance(writer, dict) and writer.get("type") == "array" and can_read(reader["items"], writer["items"])
    if isinstance(reader, dict) and reader.get("type") == "map":
        return isinstance(writer, dict) and writer.get("type") == "map" and can_read(reader["values"], writer["values"])
    if isinstance(reader, dict) and reader.get("type") == "enum":
        return isinstance(writer, dict) and writer.get("type") == "enum" and (set(writer.get("symbols", [])) <= set(reader.get("symbols", [])) or "default" in reader)
    r, w = type_name(reader), type_name(writer)
    return r == w or r in PROMOTIONS.get(w, set())


def compatible(level, new, olds):
    if level == "NONE" or not olds:
        return True
    against = olds if level.endswith("_TRANSITIVE") else olds[-1:]
    base = level.replace("_TRANSITIVE", "")
    for old in against:
        if base in ("BACKWARD", "FULL") and not can_read(new, old):
            return False
        if base in ("FORWARD", "FULL") and not can_read(old, new):
            return False
    return True


class Registry:
    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = []  # id - 1 -> canonical schema text
        self.subjects = {}  # subject -> [ids]
        self.config = {"": "BACKWARD"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.command, fmt % args))

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, error_code, message):
        self.reply(code, {"error_code": error_code, "message": message})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method):
        reg = self.server.registry
        if self.server.auth and self.headers.get("Authorization") != self.server.auth:
            return self.error(401, 401, "Unauthorized")
        path = self.path.split("?")[0].rstrip("/")
        with reg.lock:
            try:
                self.dispatch(reg, method, path)
            except (ValueError, KeyError) as e:
                self.error(422, 42201, f"invalid schema: {e}")

    def version_entry(self, reg, subject, version):
        ids = reg.subjects.get(subject)
        if not ids:
            return None, self.error(404, 40401, f"Subject '{subject}' not found.")
        index = len(ids) if version == "latest" else int(version)
        if not 1 <= index <= len(ids):
            return None, self.error(404, 40402, f"Version {version} not found.")
        sid = ids[index - 1]
        return {"subject": subject, "version": index, "id": sid, "schema": reg.schemas[sid - 1]}, None

    def dispatch(self, reg, method, path):
        if method == "GET" and path == "/subjects":
            return self.reply(200, sorted(reg.subjects))
        if path == "/config" or path.startswith("/config/"):
            subject = path[len("/config/"):] if path.startswith("/config/") else ""
            if method == "PUT":
                level = self.body()["compatibility"].upper()
                reg.config[subject] = level
                return self.reply(200, {"compatibility": level})
            if subject and subject not in reg.config:
                return self.error(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
            return self.reply(200, {"compatibilityLevel": reg.config[subject]})
        m = re.fullmatch(r"/schemas/ids/(\d+)(/versions)?", path)
        if m and method == "GET":
            sid = int(m.group(1))
            if not 1 <= sid <= len(reg.schemas):
                return self.error(404, 40403, f"Schema {sid} not found")
            if m.group(2):
                return self.reply(200, [{"subject": s, "version": i + 1} for s, ids in sorted(reg.subjects.items()) for i, x in enumerate(ids) if x == sid])
            return self.reply(200, {"schema": reg.schemas[sid - 1]})
        m = re.fullmatch(r"/compatibility/subjects/([^/]+)/versions/([^/]+)", path)
        if m and method == "POST":
            subject = m.group(1)
            new = json.loads(self.body()["schema"])
            entry, _ = self.version_entry(reg, subject, m.group(2))
            if entry is None:
                return None
            level = reg.config.get(subject, reg.config[""])
            return self.reply(200, {"is_compatible": compatible(level, new, [json.loads(entry["schema"])])})
        m = re.fullmatch(r"/subjects/([^/]+)/versions(?:/([^/]+))?", path)
        if m:
            subject, version = m.group(1), m.group(2)
            if method == "GET" and version is None:
                if subject not in reg.subjects:
                    return self.error(404, 40401, f"Subject '{subject}' not found.")
                return self.reply(200, list(range(1, len(reg.subjects[subject]) + 1)))
            if method == "GET":
                entry, _ = self.version_entry(reg, subject, version)
                return self.reply(200, entry) if entry else None
            if method == "POST" and version is None:
                body = self.body()
                if body.get("schemaType", "AVRO") != "AVRO":
                    return self.error(422, 42201, "only AVRO schemas are supported")
                parsed = json.loads(body["schema"])
                canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
                ids = reg.subjects.setdefault(subject, [])
                for sid in ids:
                    if reg.schemas[sid - 1] == canonical:
                        return self.reply(200, {"id": sid})
                level = reg.config.get(subject, reg.config[""])
                if not compatible(level, parsed, [json.loads(reg.schemas[i - 1]) for i in ids]):
                    if not ids:
                        del reg.subjects[subject]
                    return self.error(409, 409, f"Schema being registered is incompatible with an earlier schema for subject '{subject}' ({level})")
                if canonical in reg.schemas:
                    sid = reg.schemas.index(canonical) + 1
                else:
                    reg.schemas.append(canonical)
                    sid = len(reg.schemas)
                ids.append(sid)
                return self.reply(200, {"id": sid})
        m = re.fullmatch(r"/subjects/([^/]+)", path)
        if m and method == "POST":
            subject = m.group(1)
            canonical = json.dumps(json.loads(self.body()["schema"]), sort_keys=True, separators=(",", ":"))
            for i, sid in enumerate(reg.subjects.get(subject, [])):
                if reg.schemas[sid - 1] == canonical:
                    return self.reply(200, {"subject": subject, "id": sid, "version": i + 1, "schema": canonical})
            if subject not in reg.subjects:
                return self.error(404, 40401, f"Subject '{subject}' not found.")
            return self.error(404, 40403, "Schema not found")
        return self.error(404, 404, f"no route for {method} {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--basic-auth", help="USER:PASSWORD every request must present (HTTP basic)")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.registry = Registry()
    server.verbose = args.verbose
    server.auth = "Basic " + base64.b64encode(args.basic_auth.encode()).decode() if args.basic_auth else None
    print(f"schema registry on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
