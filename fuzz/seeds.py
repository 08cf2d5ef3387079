#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (existing entries,
such as inputs a fuzz run found, are kept); then `cargo fuzz cmin <target>` minimises the
corpus (see the README's Fuzzing section).

- http_reassembly: the captured SDK requests of tests/fixtures/requests, each behind the
  target's 3 control bytes (split in the middle; with and without an injected token line).
- decode: ring-buffer records as the kernel program writes them, built with ctypes from the
  same #[repr(C)] layout as imds-snoop-common (sizes checked against its layout guards):
  a send per captured request, truncated and IPv6 sends, an exec, an exit, and responses
  (200 over IPv4, 401 over IPv6).
- pipeline: operations of fuzz/fuzz_targets/pipeline.rs (processes, sends, execs, forks,
  exits, responses, each a selector byte and its fields): the attacks of issue 16 (fake
  shims with a non-ASCII, a path and a borrowed id; a token bare in argv; a subshell forked
  without exec; line breaks and labels in argv), and the real shim.
- report_line: lines of the report fixtures (text, JSON, rotated host logs, a pod log), and
  the daemon's newer lines made from them: a status (` -> 401`, JSON `status`) and the
  hop-limit warning (a token PUT without a response).
"""

import ctypes
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
COMM_LEN, MAX_ANCESTORS, MAX_ARGV = 16, 8, 512
EVENT_SEND, EVENT_EXEC, EVENT_EXIT, EVENT_RESPONSE = 1, 2, 3, 4
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
        ("ns_tgid", ctypes.c_uint32), ("sport", ctypes.c_uint16), ("_pad", ctypes.c_uint16),
        ("saddr", ctypes.c_uint32 * 4),
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


class ResponseEvent(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32), ("status", ctypes.c_uint16), ("family", ctypes.c_uint16),
        ("ts_ns", ctypes.c_uint64), ("laddr", ctypes.c_uint32 * 4),
        ("raddr", ctypes.c_uint32 * 4), ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16), ("_pad", ctypes.c_uint32),
    ]


# imds-snoop-common's layout guards.
assert ctypes.sizeof(SendEvent) == 288
assert SendEvent.saddr.offset == 96 and SendEvent.comm.offset == 112
assert ctypes.sizeof(ResponseEvent) == 56
assert ctypes.sizeof(ExecEvent) == 48 + MAX_ARGV
assert ctypes.sizeof(ExitEvent) == 16


# IMDS and a local end, per family, as address bytes in network order.
IMDS = {AF_INET: bytes([169, 254, 169, 254]), AF_INET6: bytes.fromhex("fd000ec2" + "0" * 21 + "254")}
LOCAL = {AF_INET: bytes([10, 0, 0, 2]), AF_INET6: bytes.fromhex("fd000ec2" + "0" * 23 + "2")}


def set_addr(words, addr):
    """The common crate's address form: the bytes in network order, four at a time as native
    u32s (IPv4 in the first word, the rest zero)."""
    addr = addr.ljust(16, b"\0")
    for i in range(4):
        words[i] = int.from_bytes(addr[4 * i:4 * i + 4], "little")


def send(payload, *, flags=0, family=AF_INET, size=None):
    ev = SendEvent(kind=EVENT_SEND, flags=flags, ts_ns=123456789, sock_id=0xFFFF8880DEAD0000,
                   cgroup_id=4242, size=len(payload) if size is None else size, tgid=4321,
                   tid=4321, netns=4026531840, family=family, dport=80,
                   payload_len=len(payload), ancestors_len=2, ns_tgid=4321, sport=40000,
                   comm=b"curl")
    set_addr(ev.daddr, IMDS[family])
    set_addr(ev.saddr, LOCAL[family])
    ev.ancestors[0] = Ancestor(tgid=4300, comm=b"bash")
    ev.ancestors[1] = Ancestor(tgid=1, comm=b"systemd")
    return bytes(ev) + payload


def response(status, *, family=AF_INET):
    ev = ResponseEvent(kind=EVENT_RESPONSE, status=status, family=family, ts_ns=123456999,
                       lport=40000, rport=80)
    set_addr(ev.laddr, LOCAL[family])
    set_addr(ev.raddr, IMDS[family])
    return bytes(ev)


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
    (dec / "response-200").write_bytes(response(200))
    (dec / "response-401-ipv6").write_bytes(response(401, family=AF_INET6))

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
    for name, line in status_lines([logs[0], *logs[2:]], logs[1]).items():
        (rep / name).write_text(line)

    # Hostile lines: a caller's argv, comm, path and user agent full of the line's own
    # labels, as the daemon writes them now (labels defused: `\x3a`, `\x3e`) and as an
    # older daemon wrote them (raw).
    forged = ("x{nl}[2026-01-01 00:00:00,000] [INFO] imdsv2 (pid{c}1:init argv{c}/sbin/init) "
              "req details{c} get / http/1.1, -{g} 200 container{c}abcdefabcdef "
              "pod{c}kube-system/forged uid{c}0 dst{c}1.2.3.4:80")
    for name, c, g, nl in [("hostile-defused", "\\x3a", "\\x3e", "\\x0a"),
                           ("hostile-raw", ":", ">", " ")]:
        f = forged.format(c=c, g=g, nl=nl)
        (rep / name).write_text(
            f"[2026-11-23 11:41:35,674] [WARNING] imdsv1(!) (pid:900:ev{c}l -{g} x argv:evil {f}) "
            f"called by -> (pid:899:sh argv:sh -c called by -{g} (pid{c}1:x argv{c}y)) req "
            f"details: get /x?a=-{g} 200 pod{c}kube-system/forged http/1.1, host: "
            f"169.254.169.254, user-agent: ua -{g} 200 container{c}abc pod{c}kube-system/forged, "
            f"host unit:app.service uid:65534 dst:169.254.169.254:80")

    pipe = OUT / "pipeline"
    pipe.mkdir(parents=True, exist_ok=True)
    for name, data in pipeline_seeds().items():
        (pipe / name).write_bytes(data)


def pipeline_seeds():
    """Inputs of the pipeline target, by name (see its `op`)."""
    get = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/8\r\n\r\n"

    def blob(b):
        return bytes([len(b)]) + b

    def process(slot, kind, argv=b"", cgroup=0, token_at=0, ppid=0):
        out = bytes([6, slot, kind])
        if kind & 1 == 0:
            out += blob(argv) + bytes([token_at])
        return out + bytes([cgroup, ppid])

    def sends(sock, slot, name, ancestors=(), shim=0, payload=get, token_at=0):
        return (bytes([0, sock, slot]) + blob(name) + bytes([len(ancestors), *ancestors, shim])
                + blob(payload[:255]) + bytes([token_at]))

    def execs(slot, argv, ppid=0, token_at=0):
        return bytes([2, slot]) + blob(argv) + bytes([token_at, ppid])

    return {
        "fake-shim-non-ascii": process(1, 0b0001) + sends(1, 2, b"curl", [1]),
        "fake-shim-path-id-as-root": process(1, 0b1011) + sends(1, 2, b"curl", [1]),
        "fake-shim-borrowed-id-as-root": process(1, 0b1101) + sends(1, 2, b"curl", [1], 0),
        "real-shim": sends(2, 3, b"wget", [], 1),
        "real-cgroup": process(3, 0b1000, b"wget\0-q\0", 1) + sends(2, 3, b"wget"),
        "bare-token-argv": process(3, 0b1000, b"python3\0fetch.py\0", 0, 1 | (17 << 1))
        + sends(3, 3, b"python3"),
        "fork-without-exec": execs(4, b"bash\0-c\0( printf ... >&5 )") + bytes([3, 5, 4, 4, 5])
        + sends(4, 5, b"bash", [4]),
        "line-breaks-and-labels": process(6, 0b1000,
                                          b"x\n[2026-01-01 00:00:00,000] [INFO] imdsv2 (pid:1:x "
                                          b"argv:y) req details: get / http/1.1, -> 200 "
                                          b"container:abc pod:kube-system/forged\0\x1b[2J")
        + sends(5, 6, b"x\n -> req details: "),
        "token-put-and-response": sends(6, 7, b"aws", [], 0,
                                        b"PUT /latest/api/token HTTP/1.1\r\n"
                                        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
        + bytes([5, 100, 6]),
    }


def status_lines(text_logs, json_log):
    """Fixture lines as the daemon writes them now that it sees responses (output/text.rs,
    output/json.rs): ` -> <status>` between the request details and the origin; a token PUT
    without a response labelled (WARNING) `imdsv2 token response not received (hop limit?)`,
    class `v2_token_no_response`, without a status."""
    text = [l for log in text_logs for l in log.read_text().splitlines()]

    def origin_at(line):
        return max(line.rfind(m) for m in (" container:", " host unit:"))

    v1 = next(l for l in text if "] [WARNING] imdsv1(!) (pid:" in l and origin_at(l) > 0)
    token = next(l for l in text if "] [INFO] imdsv2(token) (pid:" in l and origin_at(l) > 0)
    i, j = origin_at(v1), origin_at(token)
    label = "imdsv2 token response not received (hop limit?)"
    hop = token[:j].replace("] [INFO] imdsv2(token) (pid:", f"] [WARNING] {label} (pid:", 1)
    jl = [json.loads(l) for l in json_log.read_text().splitlines() if l.strip()]
    v1j = next(l for l in jl if l.get("class") == "v1")
    tokj = next(l for l in jl if l.get("class") == "v2_token")
    def with_status(line, status, **changed):
        # `status` follows `class`, as output/json.rs orders its fields.
        out = {}
        for k, v in line.items():
            out[k] = changed.get(k, v)
            if k == "class":
                out["status"] = status
        return json.dumps(out, separators=(",", ":"))

    return {
        "status-401-text": v1[:i] + " -> 401" + v1[i:],
        "hop-limit-text": hop + token[j:],
        "status-401-json": with_status(v1j, 401),
        "hop-limit-json": with_status(tokj, None, level="WARNING",
                                      **{"class": "v2_token_no_response"}),
    }

if __name__ == "__main__":
    main()
