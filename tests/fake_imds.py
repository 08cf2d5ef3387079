#!/usr/bin/env python3
"""A fake EC2 instance metadata service (IMDS) for imds-snoop's end-to-end tests.

Run it only inside a test network namespace that owns the IMDS addresses, e.g.

    ip netns exec NS python3 tests/fake_imds.py \
        --bind 169.254.169.254 --bind fd00:ec2::254 --port 80 \
        --ready-file /tmp/x/ready --tokens-file /tmp/x/secrets

It speaks HTTP/1.1 with keep-alive like the real service: PUT /latest/api/token hands out
session tokens (IMDSv2), GETs under /latest/meta-data/ and /latest/dynamic/ answer with or
without a token (IMDSv1) unless --require-v2 is given. Every secret it can hand out (each
issued token, and the fake role credentials) is appended to --tokens-file, one
`kind<TAB>value` line each, so a test can check that none of them ever reaches a log.

Python standard library only; exits 0 on SIGTERM or SIGINT.
"""

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600
ROLE = "test-role"


class State:
    """What all connections share: options, issued tokens, the fake credentials."""

    def __init__(self, args):
        self.require_v2 = args.require_v2
        self.reset_token_puts = args.reset_token_puts
        self.ttl = args.ttl
        self.tokens_file = args.tokens_file
        self.lock = threading.Lock()
        self.tokens = {}  # token -> expiry (time.monotonic())
        # Random per run, so a leak found in a log cannot be a coincidence of fixed text.
        self.credentials = {
            "Code": "Success",
            "LastUpdated": _iso(datetime.now(timezone.utc)),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIAFAKE" + secrets.token_hex(6).upper(),
            "SecretAccessKey": "fakeSecret" + _token(30),
            "Token": "fakeSessionToken" + _token(120),
            "Expiration": _iso(datetime.now(timezone.utc) + timedelta(hours=6)),
        }
        for kind in ("AccessKeyId", "SecretAccessKey", "Token"):
            self.record_secret(kind, self.credentials[kind])

    def record_secret(self, kind, value):
        if not self.tokens_file:
            return
        with self.lock, open(self.tokens_file, "a", encoding="utf-8") as f:
            f.write(f"{kind}\t{value}\n")

    def issue_token(self, ttl):
        # Real tokens are 56 base64 characters (42 bytes); the record must be on disk
        # before the client can possibly use (and a tracer log) the token.
        token = _token(42)
        self.record_secret("token", token)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def token_valid(self, token):
        with self.lock:
            expiry = self.tokens.get(token)
        return expiry is not None and time.monotonic() < expiry


def _token(nbytes):
    return base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def _iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata(state, path):
    """Body for a GET of `path`, or None for 404. Directory listings end in '/'."""
    docs = {
        "/": "latest",
        "/latest/": "api/\ndynamic/\nmeta-data/",
        "/latest/meta-data/": "ami-id\nhostname\niam/\ninstance-id\ninstance-type\n"
        "local-ipv4\nplacement/",
        "/latest/meta-data/ami-id": "ami-0fake0000000000000",
        "/latest/meta-data/hostname": "ip-10-0-0-1.ec2.internal",
        "/latest/meta-data/instance-id": "i-0fake00000000000001",
        "/latest/meta-data/instance-type": "m5.large",
        "/latest/meta-data/local-ipv4": "10.0.0.1",
        "/latest/meta-data/placement/": "availability-zone\nregion",
        "/latest/meta-data/placement/availability-zone": "us-east-1a",
        "/latest/meta-data/placement/region": "us-east-1",
        "/latest/meta-data/iam/": "info\nsecurity-credentials/",
        "/latest/meta-data/iam/info": json.dumps(
            {
                "Code": "Success",
                "LastUpdated": state.credentials["LastUpdated"],
                "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/" + ROLE,
                "InstanceProfileId": "AIPAFAKE0000000000000",
            },
            indent=2,
        ),
        "/latest/meta-data/iam/security-credentials/": ROLE,
        "/latest/meta-data/iam/security-credentials/" + ROLE: json.dumps(
            state.credentials, indent=2
        ),
        "/latest/dynamic/": "instance-identity/",
        "/latest/dynamic/instance-identity/": "document",
        "/latest/dynamic/instance-identity/document": json.dumps(
            {
                "accountId": "123456789012",
                "architecture": "x86_64",
                "availabilityZone": "us-east-1a",
                "imageId": "ami-0fake0000000000000",
                "instanceId": "i-0fake00000000000001",
                "instanceType": "m5.large",
                "privateIp": "10.0.0.1",
                "region": "us-east-1",
                "version": "2017-09-30",
            },
            indent=2,
        ),
    }
    # IMDS tolerates a missing trailing slash on directories.
    return docs.get(path) or docs.get(path + "/")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as IMDS does
    server_version = "EC2ws"
    sys_version = ""
    state = None  # set by main()

    def set_hop_limit(self):
        """IMDS's http_put_response_hop_limit: the IP TTL (IPv6 hop limit) of the token PUT's
        response. Set on the connection before the reply and left there, so TCP's
        retransmissions of that reply carry it too (a retransmission with the default TTL
        would get through and hide the failure)."""
        if self.state.ttl is None:
            return
        if self.connection.family == socket.AF_INET6:
            self.connection.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, self.state.ttl
            )
        else:
            self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.state.ttl)

    def log_message(self, fmt, *args):
        sys.stderr.write(f"fake_imds: {self.client_address[0]} {fmt % args}\n")

    def reply(self, code, body="", headers=()):
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def drain_body(self):
        # Keep-alive needs the request body read off the connection.
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)

    def do_PUT(self):
        self.drain_body()
        if self.path != TOKEN_PATH:
            return self.reply(403, "Forbidden")
        if self.state.reset_token_puts:
            # SO_LINGER 0: close() sends a reset, no response.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if self.headers.get("X-Forwarded-For") is not None:
            # IMDS refuses token requests that went through a proxy.
            return self.reply(403, "Forbidden")
        ttl = self.headers.get(TTL_HEADER)
        try:
            ttl = int(ttl)
        except (TypeError, ValueError):
            return self.reply(400, "Bad Request")
        if not 1 <= ttl <= MAX_TTL:
            return self.reply(400, "Bad Request")
        token = self.state.issue_token(ttl)
        self.set_hop_limit()
        self.reply(200, token, [(TTL_HEADER, str(ttl))])

    def do_GET(self):
        self.drain_body()
        if self.path == TOKEN_PATH:
            return self.reply(405, "Method Not Allowed")
        token = self.headers.get(TOKEN_HEADER)
        if token is not None and not self.state.token_valid(token):
            return self.reply(401, "Unauthorized")
        if token is None and self.state.require_v2:
            return self.reply(401, "Unauthorized")
        body = metadata(self.state, self.path.split("?", 1)[0])
        if body is None:
            return self.reply(404, "Not Found")
        self.reply(200, body)

    do_HEAD = do_GET


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Tests open 50 connections at once; the default backlog of 5 would drop SYNs and
    # stall clients for a second-long retransmit.
    request_queue_size = 256

    def __init__(self, addr, port):
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        super().__init__((addr, port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", action="append", required=True, metavar="ADDR",
                   help="address to listen on (repeatable)")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--require-v2", action="store_true",
                   help="http_tokens=required: a GET without a token gets 401")
    p.add_argument("--reset-token-puts", action="store_true",
                   help="answer token PUTs with a TCP reset instead of a response (a proxy "
                   "or firewall in IMDS's place)")
    p.add_argument("--ttl", type=int, metavar="N",
                   help="IP TTL / IPv6 hop limit of token PUT responses (IMDS's PUT response "
                   "hop limit); applies to the rest of that connection too")
    p.add_argument("--ready-file", metavar="PATH",
                   help="written (with our pid) once every address is listening")
    p.add_argument("--tokens-file", metavar="PATH",
                   help="every issued token and fake credential value is appended here")
    args = p.parse_args()

    Handler.state = State(args)
    servers = [Server(addr, args.port) for addr in args.bind]  # binds now, or raises
    for server in servers:
        # A short poll interval makes shutdown() on SIGTERM prompt.
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if args.ready_file:
        # Atomic, so a poller never reads a half-written file.
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(tmp, args.ready_file)
    sys.stderr.write(f"fake_imds: listening on {', '.join(args.bind)} port {args.port}\n")

    while not stop.wait(3600):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
