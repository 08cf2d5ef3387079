#!/usr/bin/env python3
"""A burst of IMDS requests that must overflow a small ring buffer, for the reliability
test: `ring_burst.py N DAEMON_PID TAG`.

One keep-alive connection, N sends of one whole request each (one ring record per send).
The daemon is stopped (SIGSTOP) for the burst, so the ring fills after its first few
records and the kernel counts the rest as dropped: a consumer that falls behind, made
deterministic. Prints "quiet" when no task was created or went away on the machine during
the burst (/proc/loadavg: task count and last pid unchanged), else "busy ...": the kernel's
exec/exit events go through the same ring and drop counter, so another process's exec or
exit while the ring is full would be counted as a drop too.
"""

import os
import signal
import socket
import sys
import time

IMDS = ("169.254.169.254", 80)


def tasks():
    # "0.50 0.40 0.30 2/345 12345": runnable/total tasks, last pid created.
    fields = open("/proc/loadavg").read().split()
    return fields[3].split("/")[1], fields[4]


def main():
    n, daemon, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    requests = [
        f"GET /latest/meta-data/{tag}-{i} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".encode()
        for i in range(n)
    ]
    s = socket.create_connection(IMDS, timeout=5)
    # One request and its response first: then the fake IMDS's thread for this connection
    # runs, and the burst window below expects no task to come or go at all.
    s.sendall(f"GET /latest/meta-data/instance-id?prime-{tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    if not s.recv(65536):
        sys.exit("the fake IMDS closed the connection")
    os.kill(daemon, signal.SIGSTOP)
    try:
        before = tasks()
        for r in requests:
            s.sendall(r)
        after = tasks()
    finally:
        os.kill(daemon, signal.SIGCONT)
    if before != after:
        print(f"busy: tasks/last pid {before} -> {after}")
    else:
        print("quiet")
    sys.stdout.flush()
    # Our own exit event must not meet a full ring: the daemon drains it within
    # milliseconds of SIGCONT; the fake's responses are read (and discarded) meanwhile.
    deadline = time.monotonic() + 1.0
    s.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            if not s.recv(65536):
                break
        except socket.timeout:
            pass
    s.close()


if __name__ == "__main__":
    main()
