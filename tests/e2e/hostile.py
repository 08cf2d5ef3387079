#!/usr/bin/env python3
"""Hostile and odd payloads to IMDS for imds-snoop's e2e tests. Run inside a test namespace.

Each case sends to HOST:80 and closes; the server's answers are not read (it may reject
them). Cases, one per argv word:

garbage   binary bytes that are not HTTP                 -> one malformed(!) line
longline  a GET whose request line is 64 KiB             -> one line, truncated
manysends a v2 GET whose headers arrive in 30 sends      -> one imdsv2 line
stalled   headers never finished (socket held 3 s)       -> one line, truncated (expired)
halfopen  20 connections that send only "GET /"          -> 20 lines, truncated
"""

import socket
import sys
import time

HOST = "169.254.169.254"


def conn():
    return socket.create_connection((HOST, 80), timeout=5)


def garbage():
    s = conn()
    s.sendall(bytes(range(256)) * 4)
    time.sleep(0.1)
    s.close()


def longline():
    s = conn()
    s.sendall(b"GET /latest/meta-data/" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    s.close()


def manysends():
    s = conn()
    req = (
        b"GET /latest/meta-data/many-sends HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"User-Agent: hostile/1.0\r\nX-aws-ec2-metadata-token: AQAEAhostileTokenValue0123456789==\r\n\r\n"
    )
    step = len(req) // 30 + 1
    for i in range(0, len(req), step):
        s.send(req[i : i + step])
        time.sleep(0.005)
    time.sleep(0.1)
    s.close()


def stalled():
    s = conn()
    s.sendall(b"GET /latest/meta-data/stalled HTTP/1.1\r\nHost: 169.254.169.254\r\n")
    time.sleep(3)
    s.close()


def halfopen():
    socks = []
    for _ in range(20):
        s = conn()
        s.sendall(b"GET /")
        socks.append(s)
    time.sleep(3)
    for s in socks:
        s.close()


for case in sys.argv[1:]:
    globals()[case]()
