//! The kernel event decoder (imds-snoop/src/decode.rs) on arbitrary ring-buffer records.
//!
//! Properties: it never panics; a record shorter than its kind's head, of an unknown kind, or
//! whose `payload_len` runs past its end is an error (the daemon counts it); a decoded event
//! says what the record says (its payload is exactly `payload_len` bytes of the record, at
//! most `MAX_ANCESTORS` ancestors, at most `MAX_ARGV` bytes of argv; a send's and a
//! response's addresses and ports, and a response's status, are exactly the record's, as are
//! a hop-limit drop's TTL, netns, addresses, ports and reason when it has one), so
//! output is bounded by the record.
#![no_main]

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use imds_snoop::decode::{DecodeError, Event, decode};
use imds_snoop_common::{
    AF_INET6, COMM_LEN, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_HOP_DROP, EVENT_RESPONSE,
    EVENT_SEND, ExecEvent, ExitEvent, ForkEvent, HOP_DROP_BY_REASON, HopDropEvent, MAX_ANCESTORS,
    MAX_ARGV, ResponseEvent, SendEvent,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|record: &[u8]| {
    let result = decode(record);
    let Some(kind) = u32_at(record, 0) else {
        assert_eq!(result, Err(DecodeError::Short(record.len(), 4)));
        return;
    };
    let head = match kind {
        EVENT_SEND => size_of::<SendEvent>(),
        EVENT_EXEC => size_of::<ExecEvent>(),
        EVENT_EXIT => size_of::<ExitEvent>(),
        EVENT_FORK => size_of::<ForkEvent>(),
        EVENT_RESPONSE => size_of::<ResponseEvent>(),
        EVENT_HOP_DROP => size_of::<HopDropEvent>(),
        other => {
            assert_eq!(result, Err(DecodeError::Kind(other)));
            return;
        }
    };
    if record.len() < head {
        assert_eq!(result, Err(DecodeError::Short(record.len(), head)));
        return;
    }
    // The lossy UTF-8 of n bytes is at most 3n bytes (one U+FFFD per invalid byte).
    let lossy_bound = |n: usize| 3 * n;
    match result {
        Ok(Event::Send(send)) => {
            assert_eq!(kind, EVENT_SEND);
            let payload_len = u32_at(record, offset_of!(SendEvent, payload_len)).unwrap();
            assert_eq!(send.payload.len(), payload_len as usize);
            assert_eq!(send.payload, record[head..head + send.payload.len()]);
            assert!(send.ancestors.len() <= MAX_ANCESTORS);
            assert!(send.comm.len() <= lossy_bound(COMM_LEN));
            assert!(
                send.ancestors
                    .iter()
                    .all(|(_, comm)| comm.len() <= lossy_bound(COMM_LEN))
            );
            assert_eq!(
                send.tgid,
                u32_at(record, offset_of!(SendEvent, tgid)).unwrap()
            );
            let family = u16_at(record, offset_of!(SendEvent, family)).unwrap();
            assert_eq!(
                send.dst,
                (
                    addr_at(record, offset_of!(SendEvent, daddr), family),
                    u16_at(record, offset_of!(SendEvent, dport)).unwrap()
                )
            );
            assert_eq!(
                send.src,
                (
                    addr_at(record, offset_of!(SendEvent, saddr), family),
                    u16_at(record, offset_of!(SendEvent, sport)).unwrap()
                )
            );
        }
        Ok(Event::Exec(exec)) => {
            assert_eq!(kind, EVENT_EXEC);
            let argv_bytes: usize = exec.argv.iter().map(String::len).sum();
            assert!(argv_bytes <= lossy_bound(MAX_ARGV));
            assert!(exec.argv.iter().all(|a| !a.is_empty() && !a.contains('\0')));
            assert!(exec.comm.len() <= lossy_bound(COMM_LEN));
            assert_eq!(
                exec.tgid,
                u32_at(record, offset_of!(ExecEvent, tgid)).unwrap()
            );
        }
        Ok(Event::Exit { tgid }) => {
            assert_eq!(kind, EVENT_EXIT);
            assert_eq!(tgid, u32_at(record, offset_of!(ExitEvent, tgid)).unwrap());
        }
        Ok(Event::Fork { tgid, ppid }) => {
            assert_eq!(kind, EVENT_FORK);
            assert_eq!(tgid, u32_at(record, offset_of!(ForkEvent, tgid)).unwrap());
            assert_eq!(ppid, u32_at(record, offset_of!(ForkEvent, ppid)).unwrap());
        }
        Ok(Event::Response(response)) => {
            assert_eq!(kind, EVENT_RESPONSE);
            // The status is the record's, as is: the decoder neither checks nor maps it.
            assert_eq!(
                response.status,
                u16_at(record, offset_of!(ResponseEvent, status)).unwrap()
            );
            let family = u16_at(record, offset_of!(ResponseEvent, family)).unwrap();
            assert_eq!(
                response.local,
                (
                    addr_at(record, offset_of!(ResponseEvent, laddr), family),
                    u16_at(record, offset_of!(ResponseEvent, lport)).unwrap()
                )
            );
            assert_eq!(
                response.remote,
                (
                    addr_at(record, offset_of!(ResponseEvent, raddr), family),
                    u16_at(record, offset_of!(ResponseEvent, rport)).unwrap()
                )
            );
        }
        Ok(Event::HopDrop(drop)) => {
            assert_eq!(kind, EVENT_HOP_DROP);
            // TTL, netns, addresses and ports are the record's; the reason only when the
            // record says the kernel gave one.
            assert_eq!(drop.ttl, record[offset_of!(HopDropEvent, ttl)]);
            assert_eq!(
                drop.netns,
                u32_at(record, offset_of!(HopDropEvent, netns)).unwrap()
            );
            let by_reason = record[offset_of!(HopDropEvent, how)] == HOP_DROP_BY_REASON;
            assert_eq!(
                drop.reason,
                by_reason.then(|| u32_at(record, offset_of!(HopDropEvent, reason)).unwrap())
            );
            let family = u16_at(record, offset_of!(HopDropEvent, family)).unwrap();
            assert_eq!(
                drop.local,
                (
                    addr_at(record, offset_of!(HopDropEvent, laddr), family),
                    u16_at(record, offset_of!(HopDropEvent, lport)).unwrap()
                )
            );
            assert_eq!(
                drop.remote,
                (
                    addr_at(record, offset_of!(HopDropEvent, raddr), family),
                    u16_at(record, offset_of!(HopDropEvent, rport)).unwrap()
                )
            );
        }
        Err(DecodeError::PayloadLen {
            payload_len,
            available,
        }) => {
            assert_eq!(kind, EVENT_SEND);
            assert_eq!(available, record.len() - head);
            assert!(payload_len as usize > available);
        }
        Err(e) => panic!("a record of {} bytes with a whole head: {e}", record.len()),
    }
});

fn u32_at(record: &[u8], off: usize) -> Option<u32> {
    let b = record.get(off..off + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(record: &[u8], off: usize) -> Option<u16> {
    let b = record.get(off..off + 2)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// An address field as the common crate defines it: the address bytes in network order
/// (IPv4 in the first four, anything but AF_INET6 read as IPv4).
fn addr_at(record: &[u8], off: usize, family: u16) -> IpAddr {
    let b: [u8; 16] = record[off..off + 16].try_into().unwrap();
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}
