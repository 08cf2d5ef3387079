#!/usr/bin/env python3
"""IMDS requests whose bytes reach the kernel in several sends, for imds-snoop's e2e tests.

Run inside a test namespace. Makes four requests to HOST (default 169.254.169.254) port 80,
each checked for status 200, and prints the token it got on stdout:

1. PUT /latest/api/token in one send()                      -> imdsv2(token)
2. GET /latest/meta-data/instance-id, v1: request line in one send(), the headers in a
   second send() 50 ms later                                 -> imdsv1(!)
3. GET /latest/meta-data/placement/region, v2: sendmsg() of three buffers with the token
   header in the LAST one                                    -> imdsv2
4. GET /latest/meta-data/local-ipv4, v1: os.writev() of three buffers, on the same
   keep-alive connection as 3                                -> imdsv1(!)
"""

import os
import socket
import sys
import time

HOST = sys.argv[1] if len(sys.argv) > 1 else "169.254.169.254"
UA = "split-send-test/1.0"


def connect():
    return socket.create_connection((HOST, 80), timeout=5)


def read_response(sock):
    """Reads one response (headers + Content-Length body); returns (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"connection closed mid-response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("connection closed mid-body")
        body += chunk
    return status, body[:length].decode("utf-8")


def expect_ok(what, sock):
    status, body = read_response(sock)
    if status != 200:
        raise SystemExit(f"{what}: HTTP {status}: {body}")
    return body


def main():
    host = f"Host: {HOST}\r\n".encode()
    ua = f"User-Agent: {UA}\r\n".encode()

    with connect() as s:
        s.sendall(b"PUT /latest/api/token HTTP/1.1\r\n" + host + ua
                  + b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\r\n")
        token = expect_ok("token PUT", s)

    with connect() as s:
        s.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n")
        time.sleep(0.05)  # a separate send, for sure: the first one is already on the wire
        s.sendall(host + ua + b"Accept: */*\r\n\r\n")
        expect_ok("split v1 GET", s)

    with connect() as s:
        parts = [
            b"GET /latest/meta-data/placement/region HTTP/1.1\r\n",
            host + ua + b"Accept: */*\r\n",
            f"X-aws-ec2-metadata-token: {token}\r\n\r\n".encode(),
        ]
        if s.sendmsg(parts) != sum(map(len, parts)):
            raise SystemExit("short sendmsg")
        expect_ok("sendmsg v2 GET", s)

        parts = [
            b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\n",
            host,
            ua + b"Accept: */*\r\n\r\n",
        ]
        if os.writev(s.fileno(), parts) != sum(map(len, parts)):
            raise SystemExit("short writev")
        expect_ok("writev v1 GET", s)

    print(token)


if __name__ == "__main__":
    main()
