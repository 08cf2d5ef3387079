#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (existing entries,
such as inputs a fuzz run found, are kept); then `cargo fuzz cmin <target>` minimises the
corpus (see the README's Fuzzing section).

- http_reassembly: the captured SDK requests of tests/fixtures/requests, each behind the
  target's 3 control bytes (split in the middle; with and without an injected token line).
- decode: ring-buffer records as the kernel program writes them, built with ctypes from the
  same #[repr(C)] layout as imds-snoop-common (sizes checked against its layout guards):
  a send per captured request, truncated and IPv6 sends, an exec and an exit.
- report_line: lines of the report fixtures (text, JSON, rotated host logs, a pod log).
"""

import ctypes
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
COMM_LEN, MAX_ANCESTORS, MAX_ARGV = 16, 8, 512
EVENT_SEND, EVENT_EXEC, EVENT_EXIT = 1, 2, 3
AF_INET, AF_INET6 = 2, 10
FLAG_TRUNCATED = 1


class Ancestor(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("comm", ctypes.c_char * COMM_LEN)]


class SendEvent(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("ts_ns", ctypes.c_uint64),
        ("sock_id", ctypes.c_uint64), ("cgroup_id", ctypes.c_uint64), ("size", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32), ("tid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32), ("netns", ctypes.c_uint32), ("family", ctypes.c_uint16),
        ("dport", ctypes.c_uint16), ("daddr", ctypes.c_uint32 * 4),
        ("payload_len", ctypes.c_uint32), ("ancestors_len", ctypes.c_uint32),
        ("ns_tgid", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN), ("ancestors", Ancestor * MAX_ANCESTORS),
    ]


class ExecEvent(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32), ("tgid", ctypes.c_uint32), ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32), ("ts_ns", ctypes.c_uint64), ("argv_len", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN), ("_pad", ctypes.c_uint32),
        ("argv", ctypes.c_char * MAX_ARGV),
    ]


class ExitEvent(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("tgid", ctypes.c_uint32), ("ts_ns", ctypes.c_uint64)]


# imds-snoop-common's layout guards.
assert ctypes.sizeof(SendEvent) == 272
assert ctypes.sizeof(ExecEvent) == 48 + MAX_ARGV
assert ctypes.sizeof(ExitEvent) == 16


def send(payload, *, flags=0, family=AF_INET, size=None):
    ev = SendEvent(kind=EVENT_SEND, flags=flags, ts_ns=123456789, sock_id=0xFFFF8880DEAD0000,
                   cgroup_id=4242, size=len(payload) if size is None else size, tgid=4321,
                   tid=4321, netns=4026531840, family=family, dport=80,
                   payload_len=len(payload), ancestors_len=2, ns_tgid=4321, comm=b"curl")
    if family == AF_INET:
        ev.daddr[0] = int.from_bytes(bytes([169, 254, 169, 254]), "little")
    else:
        addr = bytes.fromhex("fd000ec2000000000000000000000254")
        for i in range(4):
            ev.daddr[i] = int.from_bytes(addr[4 * i:4 * i + 4], "little")
    ev.ancestors[0] = Ancestor(tgid=4300, comm=b"bash")
    ev.ancestors[1] = Ancestor(tgid=1, comm=b"systemd")
    return bytes(ev) + payload


def main():
    fixtures = sorted((ROOT / "tests" / "fixtures" / "requests").glob("*.http"))
    requests = {p.stem: p.read_bytes() for p in fixtures}

    http = OUT / "http_reassembly"
    http.mkdir(parents=True, exist_ok=True)
    for name, body in requests.items():
        mid = (len(body) // 2).to_bytes(2, "little")
        (http / name).write_bytes(mid + b"\x00" + body)
        (http / f"{name}-token").write_bytes(mid + b"\x01" + body)

    dec = OUT / "decode"
    dec.mkdir(parents=True, exist_ok=True)
    for name, body in requests.items():
        (dec / f"send-{name}").write_bytes(send(body))
    some = requests["curl-v2-get-meta-data"]
    (dec / "send-truncated").write_bytes(send(some[:40], flags=FLAG_TRUNCATED, size=len(some)))
    (dec / "send-ipv6").write_bytes(send(some, family=AF_INET6))
    argv = b"curl\0-s\0http://169.254.169.254/latest/meta-data/\0"
    (dec / "exec").write_bytes(bytes(ExecEvent(kind=EVENT_EXEC, tgid=4321, ppid=4300,
                                               ts_ns=1, argv_len=len(argv), comm=b"curl",
                                               argv=argv)))
    (dec / "exit").write_bytes(bytes(ExitEvent(kind=EVENT_EXIT, tgid=4321, ts_ns=2)))

    rep = OUT / "report_line"
    rep.mkdir(parents=True, exist_ok=True)
    logs = [ROOT / "tests/fixtures/report" / p for p in
            ["e2e-daemon.log", "nodes.jsonl", "host/imds-trace.log", "host/imds-trace.log.1",
             "host/imds-trace.log.2", "pod/imds-trace.log"]]
    n = 0
    for log in logs:
        for line in log.read_text().splitlines():
            if line.strip():
                (rep / f"line-{n:03}").write_text(line)
                n += 1


if __name__ == "__main__":
    main()
