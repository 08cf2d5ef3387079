//! Ring-buffer records to typed events. Nothing here trusts the record: a short or
//! inconsistent one is an error the caller counts, never a panic.
//!
//! Records are read only as `aya::Pod` types (imds-snoop-common's `repr(C)` integer-only
//! events), and ring bytes only through `get`: the two lints below keep a slice or index
//! that could panic on a hostile record out of this module.
#![warn(clippy::indexing_slicing, clippy::string_slice)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imds_snoop_common::{
    AF_INET6, COMM_LEN, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_HOP_DROP, EVENT_RESPONSE,
    EVENT_SEND, ExecEvent, ExitEvent, FLAG_READ_ERROR, FLAG_TRUNCATED, FLAG_UNSUPPORTED_ITER,
    ForkEvent, HOP_DROP_BY_REASON, HopDropEvent, MAX_ANCESTORS, MAX_ARGV, ResponseEvent, SendEvent,
};

/// Why a ring record is not an event. The daemon counts these and goes on; none is a
/// panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record (first field, in bytes) is shorter than the head of its kind (second
    /// field, `size_of` the imds-snoop-common event), or than the 4-byte kind itself.
    #[error("record of {0} bytes is shorter than its event head ({1} bytes)")]
    Short(usize, usize),
    /// The first `u32` is none of imds-snoop-common's `EVENT_*` kinds.
    #[error("unknown event kind {0}")]
    Kind(u32),
    /// A send record whose `payload_len` claims more bytes than follow its head.
    #[error("payload_len {payload_len} exceeds the {available} bytes in the record")]
    PayloadLen {
        /// As the record says, in bytes.
        payload_len: u32,
        /// Bytes after the head (`SendEvent::HEAD_LEN`).
        available: usize,
    },
}

/// A send to a traced destination, as the kernel saw it (`tcp_sendmsg` or the
/// `tp_btf` fallback, imds-snoop-ebpf's `capture.rs`; the record is imds-snoop-common's
/// `SendEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    /// `bpf_ktime_get_boot_ns()` at the send: nanoseconds of CLOCK_BOOTTIME (the daemon's
    /// `clock::BootClock` makes it wall time).
    pub ts_ns: u64,
    /// The kernel's `struct sock *` as a number: an identity for reassembling one
    /// connection's sends, never dereferenced.
    pub sock_id: u64,
    /// `bpf_get_current_cgroup_id()`: the caller's cgroup v2 id (the inode number of its
    /// cgroup directory).
    pub cgroup_id: u64,
    /// Bytes in this send (`msg_data_left` of the `msghdr`), which may exceed the payload
    /// captured.
    pub size: u64,
    /// The caller's process id (thread group id) in the initial pid namespace.
    pub tgid: u32,
    /// The caller's pid inside its own pid namespace (its container); 0 if unknown.
    pub ns_tgid: u32,
    /// The sending thread's id.
    pub tid: u32,
    /// The caller's uid and gid (`bpf_get_current_uid_gid`), in the initial user namespace.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Inode number of the socket's network namespace (`skc_net`'s `ns.inum`); 0 if the
    /// kernel could not read it.
    pub netns: u32,
    /// The traced destination: address and port (host order).
    pub dst: (IpAddr, u16),
    /// The caller's end of the connection (with `dst`, the key its response is joined by).
    pub src: (IpAddr, u16),
    /// The caller's comm (`task->comm`, at most 15 bytes), lossily UTF-8.
    pub comm: String,
    /// `(tgid, comm)` of each ancestor, parent first, up to pid 1 or [`MAX_ANCESTORS`]
    /// levels, read in the kernel at the send.
    pub ancestors: Vec<(u32, String)>,
    /// The start of the send's bytes, as copied by the kernel (bounded by the eBPF
    /// program's capture size; see `truncated`).
    pub payload: Vec<u8>,
    /// The kernel copied fewer bytes than the send had.
    pub truncated: bool,
    /// The payload could not be read (unsupported iterator or a read fault).
    pub unreadable: bool,
}

/// A process started a new program (tracepoint `sched_process_exec`, imds-snoop-ebpf's
/// `process.rs`; the record is imds-snoop-common's `ExecEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// The process (thread group id, initial pid namespace).
    pub tgid: u32,
    /// Its parent's tgid.
    pub ppid: u32,
    /// The new program's comm, lossily UTF-8.
    pub comm: String,
    /// Arguments as the program received them (at most [`MAX_ARGV`] bytes of them; empty
    /// arguments are left out), each lossily UTF-8.
    pub argv: Vec<String>,
}

/// The status line of a response from a traced destination to a local socket
/// (cgroup_skb ingress, imds-snoop-ebpf's `response.rs`; the record is imds-snoop-common's
/// `ResponseEvent`). Only the status leaves the kernel, never a byte of the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The three-digit HTTP status code, parsed in the kernel.
    pub status: u16,
    /// The local socket's end.
    pub local: (IpAddr, u16),
    /// The traced destination.
    pub remote: (IpAddr, u16),
    /// When the packet arrived: `bpf_ktime_get_boot_ns`, as the sends' `ts_ns`.
    pub ts_ns: u64,
}

/// A reply from a traced destination dropped in the node's forwarding path with its TTL
/// run out (tp_btf `kfree_skb`, imds-snoop-ebpf's `drop.rs`; the record is
/// imds-snoop-common's `HopDropEvent`): the hop limit cut the caller at `local` off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopDrop {
    /// The packet's TTL / hop limit as it arrived at the node (0 or 1).
    pub ttl: u8,
    /// The kernel's drop reason (`SKB_DROP_REASON_IP_INHDR`'s value on that kernel) when the
    /// kernel gave one; None where the program told forwarding apart by the route (5.10).
    pub reason: Option<u32>,
    /// Inode of the network namespace the packet died in (the node's); 0 if unknown.
    pub netns: u32,
    /// The caller's end (the packet's destination).
    pub local: (IpAddr, u16),
    /// The traced destination (the packet's source).
    pub remote: (IpAddr, u16),
}

/// One ring-buffer record, decoded: what the kernel program reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A send to a traced destination (`EVENT_SEND`).
    Send(Send),
    /// A program started (`EVENT_EXEC`): keeps the argv cache current.
    Exec(Exec),
    /// A process ended (`EVENT_EXIT`, tracepoint `sched_process_exit`, for the thread group
    /// leader): its cached argv may go.
    Exit {
        /// The process that ended.
        tgid: u32,
    },
    /// A new process `tgid` (not a thread; `EVENT_FORK`, tracepoint `sched_process_fork`),
    /// forked by `ppid`: its parent's image until it execs.
    Fork {
        /// The new process.
        tgid: u32,
        /// Its parent.
        ppid: u32,
    },
    /// A response's status line (`EVENT_RESPONSE`).
    Response(Response),
    /// A reply dropped at the hop limit (`EVENT_HOP_DROP`).
    HopDrop(HopDrop),
}

/// Decodes one record of the `EVENTS` ring buffer: the first 4 bytes (native endian) are
/// the kind, then the fixed head of that kind's imds-snoop-common type, then for a send
/// `payload_len` payload bytes. Bytes after what the kind needs are ignored. Comms and argv
/// are read up to their first NUL and decoded lossily; counts (`argv_len`,
/// `ancestors_len`) are clamped to their arrays. Errors: [`DecodeError`]; never panics, on
/// any input (the `decode` fuzz target asserts it).
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let kind = record
        .get(..4)
        .and_then(|k| <[u8; 4]>::try_from(k).ok())
        .map(u32::from_ne_bytes)
        .ok_or(DecodeError::Short(record.len(), 4))?;
    match kind {
        EVENT_SEND => decode_send(record).map(Event::Send),
        EVENT_EXEC => {
            let ev: ExecEvent = head(record)?;
            let len = (ev.argv_len as usize).min(MAX_ARGV);
            let argv = ev
                .argv
                .get(..len)
                .unwrap_or_default()
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Ok(Event::Exec(Exec {
                tgid: ev.tgid,
                ppid: ev.ppid,
                comm: comm(&ev.comm),
                argv,
            }))
        }
        EVENT_EXIT => {
            let ev: ExitEvent = head(record)?;
            Ok(Event::Exit { tgid: ev.tgid })
        }
        EVENT_FORK => {
            let ev: ForkEvent = head(record)?;
            Ok(Event::Fork {
                tgid: ev.tgid,
                ppid: ev.ppid,
            })
        }
        EVENT_RESPONSE => {
            let ev: ResponseEvent = head(record)?;
            Ok(Event::Response(Response {
                status: ev.status,
                local: (address(ev.family, &ev.laddr), ev.lport),
                remote: (address(ev.family, &ev.raddr), ev.rport),
                ts_ns: ev.ts_ns,
            }))
        }
        EVENT_HOP_DROP => {
            let ev: HopDropEvent = head(record)?;
            Ok(Event::HopDrop(HopDrop {
                ttl: ev.ttl,
                reason: (ev.how == HOP_DROP_BY_REASON).then_some(ev.reason),
                netns: ev.netns,
                local: (address(ev.family, &ev.laddr), ev.lport),
                remote: (address(ev.family, &ev.raddr), ev.rport),
            }))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// Reads a fixed-size event head from the start of a record. Only `aya::Pod` types: the
/// shared events implement it (imds-snoop-common, `user` feature), a type that may hold
/// invalid bit patterns or padding does not.
fn head<T: aya::Pod>(record: &[u8]) -> Result<T, DecodeError> {
    let len = std::mem::size_of::<T>();
    if record.len() < len {
        return Err(DecodeError::Short(record.len(), len));
    }
    // SAFETY: `T: Pod` is plain old data (any bit pattern is a valid value), the record
    // holds at least size_of::<T>() bytes, and read_unaligned has no alignment needs.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

fn decode_send(record: &[u8]) -> Result<Send, DecodeError> {
    let head: SendEvent = head(record)?;
    let available = record.len() - SendEvent::HEAD_LEN;
    let payload_len = head.payload_len as usize;
    let Some(payload) = record.get(SendEvent::HEAD_LEN..SendEvent::HEAD_LEN + payload_len) else {
        return Err(DecodeError::PayloadLen {
            payload_len: head.payload_len,
            available,
        });
    };
    let payload = payload.to_vec();
    let n = (head.ancestors_len as usize).min(MAX_ANCESTORS);
    let ancestors = head
        .ancestors
        .get(..n)
        .unwrap_or_default()
        .iter()
        .map(|a| (a.tgid, comm(&a.comm)))
        .collect();
    Ok(Send {
        ts_ns: head.ts_ns,
        sock_id: head.sock_id,
        cgroup_id: head.cgroup_id,
        size: head.size,
        tgid: head.tgid,
        ns_tgid: head.ns_tgid,
        tid: head.tid,
        uid: head.uid,
        gid: head.gid,
        netns: head.netns,
        dst: (address(head.family, &head.daddr), head.dport),
        src: (address(head.family, &head.saddr), head.sport),
        comm: comm(&head.comm),
        ancestors,
        payload,
        truncated: head.flags & FLAG_TRUNCATED != 0,
        unreadable: head.flags & (FLAG_UNSUPPORTED_ITER | FLAG_READ_ERROR) != 0,
    })
}

fn comm(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(raw.get(..end).unwrap_or(raw)).into_owned()
}

fn address(family: u16, words: &[u32; 4]) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    match family {
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(bytes)),
        // AF_INET; the kernel program reports nothing else.
        _ => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests build fixed-size records; a panic there is a failed test"
)]
mod tests {
    use imds_snoop_common::{AF_INET, Ancestor};

    use super::*;

    fn record(payload: &[u8], payload_len: u32) -> Vec<u8> {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut ancestors = [Ancestor::default(); MAX_ANCESTORS];
        ancestors[0] = Ancestor { tgid: 7, comm };
        ancestors[0].comm[..4].copy_from_slice(b"bash");
        let head = SendEvent {
            kind: EVENT_SEND,
            flags: FLAG_TRUNCATED,
            ts_ns: 1,
            sock_id: 0xdead,
            cgroup_id: 2,
            size: 999,
            tgid: 42,
            tid: 43,
            uid: 0,
            gid: 0,
            netns: 4026531840,
            family: AF_INET,
            dport: 80,
            daddr: [u32::from_ne_bytes([169, 254, 169, 254]), 0, 0, 0],
            payload_len,
            ancestors_len: 1,
            ns_tgid: 42,
            sport: 40000,
            _pad: 0,
            saddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            comm,
            ancestors,
        };
        // SAFETY: reading the bytes of a repr(C) integer-only struct.
        let bytes: [u8; SendEvent::HEAD_LEN] = unsafe { std::mem::transmute(head) };
        let mut v = bytes.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_send() {
        let Ok(Event::Send(s)) = decode(&record(b"GET / HTTP/1.1\r\n", 16)) else {
            panic!("not a send");
        };
        assert_eq!(s.tgid, 42);
        assert_eq!(s.comm, "curl");
        assert_eq!(s.ancestors, vec![(7, "bash".to_string())]);
        assert_eq!(s.dst, ("169.254.169.254".parse().unwrap(), 80));
        assert_eq!(s.src, ("10.0.0.2".parse().unwrap(), 40000));
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n");
        assert!(s.truncated && !s.unreadable);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(
            decode(&record(b"", 0)[..10]),
            Err(DecodeError::Short(10, SendEvent::HEAD_LEN))
        );
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short(2, 4)));
        assert!(matches!(
            decode(&record(b"abc", 4000)),
            Err(DecodeError::PayloadLen { .. })
        ));
        let mut r = record(b"", 0);
        r[0] = 9;
        assert_eq!(decode(&r), Err(DecodeError::Kind(9)));
    }

    #[test]
    fn decodes_a_response() {
        let ev = ResponseEvent {
            kind: EVENT_RESPONSE,
            status: 401,
            family: AF_INET6,
            ts_ns: 5,
            laddr: [
                u32::from_ne_bytes([0xfd, 0, 0x0e, 0xc2]),
                0,
                0,
                1u32.to_be(),
            ],
            raddr: [
                u32::from_ne_bytes([0xfd, 0, 0x0e, 0xc2]),
                0,
                0,
                0x254u32.to_be(),
            ],
            lport: 50000,
            rport: 80,
            _pad: 0,
        };
        // SAFETY: bytes of a repr(C) integer-only struct.
        let bytes: [u8; std::mem::size_of::<ResponseEvent>()] = unsafe { std::mem::transmute(ev) };
        assert_eq!(
            decode(&bytes),
            Ok(Event::Response(Response {
                status: 401,
                local: ("fd00:ec2::1".parse().unwrap(), 50000),
                remote: ("fd00:ec2::254".parse().unwrap(), 80),
                ts_ns: 5,
            }))
        );
        assert_eq!(
            decode(&bytes[..20]),
            Err(DecodeError::Short(20, std::mem::size_of::<ResponseEvent>()))
        );
    }

    #[test]
    fn decodes_a_hop_drop() {
        let ev = HopDropEvent {
            kind: EVENT_HOP_DROP,
            ttl: 1,
            how: HOP_DROP_BY_REASON,
            family: AF_INET,
            reason: 7,
            netns: 4026532000,
            ts_ns: 9,
            laddr: [u32::from_ne_bytes([10, 1, 0, 2]), 0, 0, 0],
            raddr: [u32::from_ne_bytes([169, 254, 169, 254]), 0, 0, 0],
            lport: 41000,
            rport: 80,
            _pad: 0,
        };
        // SAFETY: bytes of a repr(C) integer-only struct.
        let mut bytes: [u8; std::mem::size_of::<HopDropEvent>()] =
            unsafe { std::mem::transmute(ev) };
        assert_eq!(
            decode(&bytes),
            Ok(Event::HopDrop(HopDrop {
                ttl: 1,
                reason: Some(7),
                netns: 4026532000,
                local: ("10.1.0.2".parse().unwrap(), 41000),
                remote: ("169.254.169.254".parse().unwrap(), 80),
            }))
        );
        // Told apart by the route (5.10): no reason.
        bytes[5] = imds_snoop_common::HOP_DROP_BY_ROUTE;
        let Ok(Event::HopDrop(d)) = decode(&bytes) else {
            panic!("not a drop");
        };
        assert_eq!(d.reason, None);
        assert_eq!(
            decode(&bytes[..63]),
            Err(DecodeError::Short(63, std::mem::size_of::<HopDropEvent>()))
        );
    }

    #[test]
    fn decodes_exec_argv() {
        let mut ev = ExecEvent {
            kind: EVENT_EXEC,
            tgid: 5,
            ppid: 4,
            uid: 0,
            ts_ns: 0,
            argv_len: 0,
            comm: [0; COMM_LEN],
            _pad: 0,
            argv: [0; MAX_ARGV],
        };
        let args = b"curl\0-s\0http://169.254.169.254/\0";
        ev.argv[..args.len()].copy_from_slice(args);
        ev.argv_len = args.len() as u32;
        ev.comm[..4].copy_from_slice(b"curl");
        // SAFETY: bytes of a repr(C) integer-only struct.
        let bytes: [u8; std::mem::size_of::<ExecEvent>()] = unsafe { std::mem::transmute(ev) };
        let Ok(Event::Exec(e)) = decode(&bytes) else {
            panic!("not an exec");
        };
        assert_eq!(e.argv, ["curl", "-s", "http://169.254.169.254/"]);
        assert_eq!((e.tgid, e.ppid, e.comm.as_str()), (5, 4, "curl"));
    }
}
