"""A TLS and SASL front for the test broker, so Tidewater's Kafka security settings are tested.

Tansu 0.6 (the test broker) cannot serve TLS from its command line (`--cert` and `--key`
conflict) and its SASL users can only be created through an already authenticated
connection, so this gateway sits in front of a plaintext Tansu: it terminates TLS (optionally
requiring a client certificate signed by --client-ca), answers SaslHandshake and
SaslAuthenticate itself (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 with the users given), refuses
any other request before authentication, and then forwards Kafka frames unchanged. Tansu must
advertise the gateway's address so clients come back through it. Listens on 127.0.0.1 only.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import sys

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
API_VERSIONS = 18
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_SASL_MECHANISM = 33
SASL_AUTHENTICATION_FAILED = 58
SCRAM = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def kstring(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def read_kstring(buf, pos):
    (n,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    if n < 0:
        return None, pos
    return buf[pos : pos + n].decode(), pos + n


class Scram:
    """Server side of RFC 5802 for one exchange."""

    def __init__(self, mechanism, users):
        self.hash = SCRAM[mechanism]
        self.users = users
        self.step = 0

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def next(self, data):
        """Returns (reply, error): error is None, or the reason to refuse."""
        msg = data.decode()
        if self.step == 0:
            self.step = 1
            if not msg.startswith("n,"):
                return b"", "channel binding is not supported"
            self.client_bare = msg.split(",", 2)[2]
            attrs = dict(a.split("=", 1) for a in self.client_bare.split(","))
            self.user = attrs.get("n", "")
            password = self.users.get(self.user)
            if password is None:
                return b"", f"unknown user {self.user}"
            salt = os.urandom(16)
            self.iterations = 4096
            self.salted = hashlib.pbkdf2_hmac(
                self.hash().name, password.encode(), salt, self.iterations
            )
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = (
                f"r={self.nonce},s={base64.b64encode(salt).decode()},i={self.iterations}"
            )
            return self.server_first.encode(), None
        if self.step == 1:
            self.step = 2
            without_proof, proof = msg.rsplit(",p=", 1)
            attrs = dict(a.split("=", 1) for a in without_proof.split(","))
            if attrs.get("r") != self.nonce:
                return b"", "nonce mismatch"
            auth_message = ",".join([self.client_bare, self.server_first, without_proof]).encode()
            client_key = self.hmac(self.salted, b"Client Key")
            stored_key = self.hash(client_key).digest()
            signature = self.hmac(stored_key, auth_message)
            given = base64.b64decode(proof)
            recovered = bytes(a ^ b for a, b in zip(given, signature))
            if self.hash(recovered).digest() != stored_key:
                return b"", f"authentication failed for user {self.user}"
            server_key = self.hmac(self.salted, b"Server Key")
            server_signature = self.hmac(server_key, auth_message)
            return b"v=" + base64.b64encode(server_signature), None
        return b"", "unexpected SCRAM message"


class Connection:
    def __init__(self, args, users, reader, writer):
        self.args = args
        self.users = users
        self.reader = reader
        self.writer = writer
        self.authenticated = not users
        self.mechanism = None
        self.scram = None

    async def frame(self):
        head = await self.reader.readexactly(4)
        (n,) = struct.unpack(">i", head)
        return head + await self.reader.readexactly(n)

    def reply(self, correlation_id, body):
        payload = struct.pack(">i", correlation_id) + body
        self.writer.write(struct.pack(">i", len(payload)) + payload)

    def authenticate(self, version, correlation_id, auth_bytes):
        """Answers one SaslAuthenticate; returns False when the connection must close."""
        error, reply = None, b""
        if self.mechanism == "PLAIN":
            parts = auth_bytes.split(b"\0")
            if len(parts) != 3:
                error = "malformed PLAIN message"
            else:
                user, password = parts[1].decode(), parts[2].decode()
                if self.users.get(user) != password:
                    error = f"authentication failed for user {user}"
                else:
                    self.authenticated = True
        elif self.scram is not None:
            reply, error = self.scram.next(auth_bytes)
            if error is None and self.scram.step == 2:
                self.authenticated = True
        else:
            error = "SaslAuthenticate before SaslHandshake"
        code = SASL_AUTHENTICATION_FAILED if error else 0
        body = struct.pack(">h", code)
        body += kstring(error) if error else struct.pack(">h", -1)
        body += struct.pack(">i", len(reply)) + reply
        if version >= 1:
            body += struct.pack(">q", 0)
        self.reply(correlation_id, body)
        if error:
            print(f"kafka_gateway: refused: {error}", file=sys.stderr, flush=True)
        return error is None

    async def serve(self):
        upstream_reader = upstream_writer = None
        pump = None
        try:
            while True:
                frame = await self.frame()
                api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
                if api_key == SASL_HANDSHAKE and self.users:
                    _, pos = read_kstring(frame, 12)  # client id
                    mechanism, _ = read_kstring(frame, pos)
                    offered = self.args.mechanisms
                    code = 0 if mechanism in offered else UNSUPPORTED_SASL_MECHANISM
                    body = struct.pack(">h", code) + struct.pack(">i", len(offered))
                    body += b"".join(kstring(m) for m in offered)
                    self.reply(correlation_id, body)
                    if code:
                        return
                    self.mechanism = mechanism
                    self.scram = Scram(mechanism, self.users) if mechanism in SCRAM else None
                    await self.writer.drain()
                    continue
                if api_key == SASL_AUTHENTICATE and self.users:
                    _, pos = read_kstring(frame, 12)
                    (n,) = struct.unpack_from(">i", frame, pos)
                    ok = self.authenticate(version, correlation_id, frame[pos + 4 : pos + 4 + n])
                    await self.writer.drain()
                    if not ok:
                        return
                    continue
                if not self.authenticated and api_key != API_VERSIONS:
                    print(
                        f"kafka_gateway: refused api {api_key} before authentication",
                        file=sys.stderr,
                        flush=True,
                    )
                    return
                if upstream_writer is None:
                    host, port = self.args.upstream.rsplit(":", 1)
                    upstream_reader, upstream_writer = await asyncio.open_connection(
                        host, int(port)
                    )
                    pump = asyncio.create_task(self.copy(upstream_reader, self.writer))
                upstream_writer.write(frame)
                await upstream_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
            if upstream_writer is not None:
                upstream_writer.close()
            self.writer.close()

    @staticmethod
    async def copy(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="plaintext broker host:port")
    parser.add_argument("--cert", help="server certificate (PEM); enables TLS")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument("--client-ca", help="require client certificates signed by this CA")
    parser.add_argument("--user", action="append", default=[], help="name:password (SASL)")
    parser.add_argument(
        "--mechanisms", default="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", type=lambda s: s.split(",")
    )
    args = parser.parse_args()
    users = dict(u.split(":", 1) for u in args.user)
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader, writer):
        await Connection(args, users, reader, writer).serve()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
