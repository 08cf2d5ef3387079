//! Joins each request to the status of its response, so a line can say `-> 200` or `-> 401`
//! (what v1 calls get once IMDSv2 is required), and an unanswered token PUT can be reported
//! as the hop-limit warning.
//!
//! The join key is the connection's 4-tuple as the caller's socket sees it (local address
//! and port, IMDS address and port): the send side records it from the socket, the
//! `cgroup_skb` ingress program from the reply packet. Requests wait in a FIFO per 4-tuple,
//! since HTTP/1.1 keep-alive sends several requests on one connection and IMDS answers them
//! in order. Known edge: two network namespaces can hold the same 4-tuple at once (two pods
//! with the same address in separate, unrouted namespaces); their answers could be swapped.
//! Pods on a node normally have distinct addresses, so this is left as is.
//!
//! Memory is bounded: at most `max_pending` requests wait; past that a request is written at
//! once without a status. A request waits at most `timeout` (checked on the daemon's 1 s
//! tick), then is written without a status (and, for a token PUT, as the hop-limit warning).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use imds_snoop_common::{STATUS_CLOSED, STATUS_RESET};

use crate::{
    decode::{HopDrop, Response},
    record::{Dropped, Outcome, Record},
};

/// How long a connection whose reply was seen dropped is remembered, so a later report of
/// the same loss (past the kernel's deduplication window) is not taken for a new one.
const DROP_MEMORY: Duration = Duration::from_secs(600);
/// Connections remembered at most (a few dozen bytes each).
const MAX_DROPS_REMEMBERED: usize = 4096;

/// What a hop-limit drop joined to.
#[derive(Debug)]
pub(crate) enum DropJoin {
    /// The request waiting on that connection: its response died at the hop limit.
    Matched(Box<Record>),
    /// A connection already reported: counted, not written again.
    Repeat,
    /// No request waits on it (not traced, already written, or behind NAT): written as its
    /// own line, so no drop is lost silently.
    Unmatched,
}

/// (local end, remote end).
pub(crate) type Key = ((IpAddr, u16), (IpAddr, u16));

struct Pending {
    record: Record,
    deadline: Instant,
}

pub(crate) struct Outcomes {
    /// None: responses are not traced, nothing waits.
    timeout: Option<Duration>,
    max_pending: usize,
    pending: HashMap<Key, VecDeque<Pending>>,
    len: usize,
    /// Requests written without waiting because `max_pending` were already waiting.
    pub overflowed: u64,
    /// Responses with no waiting request (its request was not traced or already timed out).
    pub unmatched: u64,
    matched: u64,
    expired: u64,
    warned_blind: bool,
    /// Connections whose reply was seen dropped, and when (see [`DROP_MEMORY`]).
    drops_seen: HashMap<Key, Instant>,
    /// Hop-limit drops joined to their request.
    pub drops_matched: u64,
    /// Hop-limit drops that matched no waiting request.
    pub drops_unmatched: u64,
    /// Reports of a connection's drop already reported.
    pub drops_repeated: u64,
}

/// Unanswered requests, with not one answered since start, after which the response path
/// is suspected blind (see [`Outcomes::blind`]).
const BLIND_AFTER: u64 = 10;

impl Outcomes {
    /// `timeout` None: responses are not traced; every record is written at once.
    pub(crate) fn new(timeout: Option<Duration>, max_pending: usize) -> Self {
        Self {
            timeout,
            max_pending,
            pending: HashMap::new(),
            len: 0,
            overflowed: 0,
            unmatched: 0,
            matched: 0,
            expired: 0,
            warned_blind: false,
            drops_seen: HashMap::new(),
            drops_matched: 0,
            drops_unmatched: 0,
            drops_repeated: 0,
        }
    }

    /// True once (then never again) when [`BLIND_AFTER`] requests went unanswered and not
    /// one was answered: the program is attached but sees no replies (e.g. cgroup v1
    /// net_cls/net_prio in use turns off the kernel's cgroup2 socket matching), so missing
    /// statuses and hop-limit warnings mean nothing. The daemon warns about it.
    pub(crate) fn blind(&mut self) -> bool {
        if self.warned_blind || self.matched > 0 || self.expired < BLIND_AFTER {
            return false;
        }
        self.warned_blind = true;
        true
    }

    /// A complete request. Returns it when it is to be written now (nothing to wait for).
    pub(crate) fn request(&mut self, key: Key, record: Record, now: Instant) -> Option<Record> {
        let Some(timeout) = self.timeout else {
            return Some(record);
        };
        // Port 0: the kernel could not read the local end; no response can be joined.
        if key.0.1 == 0 {
            return Some(record);
        }
        if self.len >= self.max_pending {
            self.overflowed += 1;
            return Some(record);
        }
        self.pending.entry(key).or_default().push_back(Pending {
            record,
            deadline: now + timeout,
        });
        self.len += 1;
        None
    }

    /// A response: the oldest request waiting on its connection, with its status.
    pub(crate) fn response(&mut self, response: &Response) -> Option<Record> {
        let key = (response.local, response.remote);
        let end = match response.status {
            STATUS_RESET => Some(Outcome::Reset),
            STATUS_CLOSED => Some(Outcome::Closed),
            _ => None,
        };
        let queue = self.pending.get_mut(&key);
        let Some(p) = queue.and_then(VecDeque::pop_front) else {
            // A close after the last response is how connections end: not unmatched.
            if end.is_none() {
                self.unmatched += 1;
            }
            return None;
        };
        if self.pending.get(&key).is_some_and(VecDeque::is_empty) {
            self.pending.remove(&key);
        }
        self.len -= 1;
        self.matched += 1;
        let mut record = p.record;
        record.outcome = end.unwrap_or(Outcome::Status(response.status));
        Some(record)
    }

    /// A reply seen dropped at the hop limit (the drop hook): the oldest request waiting on
    /// its connection (the 4-tuple as the caller's socket sees it, the packet's destination
    /// and source) gets it as its outcome, at once: the reply will not come.
    pub(crate) fn hop_drop(&mut self, drop: &HopDrop, now: Instant) -> DropJoin {
        let key = (drop.local, drop.remote);
        if self.drops_seen.len() >= MAX_DROPS_REMEMBERED {
            self.drops_seen
                .retain(|_, at| now.duration_since(*at) < DROP_MEMORY);
            if self.drops_seen.len() >= MAX_DROPS_REMEMBERED {
                self.drops_seen.clear();
            }
        }
        let repeat = self
            .drops_seen
            .insert(key, now)
            .is_some_and(|at| now.duration_since(at) < DROP_MEMORY);
        let Some(p) = self.pending.get_mut(&key).and_then(VecDeque::pop_front) else {
            if repeat {
                self.drops_repeated += 1;
                return DropJoin::Repeat;
            }
            self.drops_unmatched += 1;
            return DropJoin::Unmatched;
        };
        if self.pending.get(&key).is_some_and(VecDeque::is_empty) {
            self.pending.remove(&key);
        }
        self.len -= 1;
        self.drops_matched += 1;
        let mut record = p.record;
        record.outcome = Outcome::Dropped(Dropped {
            ttl: drop.ttl,
            // The program reports one reason only, the forwarding TTL check's.
            reason: drop.reason.map(|_| "IP_INHDR"),
            netns: drop.netns,
        });
        DropJoin::Matched(Box::new(record))
    }

    /// Requests whose wait is over, without a status, oldest first.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Record> {
        let mut out = Vec::new();
        self.drops_seen
            .retain(|_, at| now.duration_since(*at) < DROP_MEMORY);
        self.pending.retain(|_, queue| {
            while queue.front().is_some_and(|p| p.deadline <= now) {
                if let Some(p) = queue.pop_front() {
                    let mut record = p.record;
                    record.outcome = Outcome::NoResponse;
                    out.push(record);
                }
            }
            !queue.is_empty()
        });
        self.len -= out.len();
        self.expired += out.len() as u64;
        out.sort_by_key(|r| r.time);
        out
    }

    /// Everything still waiting (the daemon is stopping): written with an unknown outcome,
    /// since their wait was cut short.
    pub(crate) fn drain(&mut self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .pending
            .drain()
            .flat_map(|(_, q)| q.into_iter().map(|p| p.record))
            .collect();
        self.len = 0;
        out.sort_by_key(|r| r.time);
        out
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use chrono::Local;

    use super::*;
    use crate::{
        attribution::{Origin, Proc},
        http::{Class, Request},
    };

    fn parse(raw: &[u8]) -> Request {
        let mut r = crate::http::Reassembler::<()>::new(4096, Duration::from_secs(1));
        r.push(0, (), raw, false, Instant::now()).remove(0).1
    }

    fn record(path: &str) -> Record {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n");
        let request = parse(raw.as_bytes());
        Record {
            time: Local::now(),
            request,
            caller: Proc {
                pid: 1,
                comm: "curl".into(),
                argv: Some("curl".into()),
            },
            ancestors: vec![],
            uid: 0,
            ns_pid: None,
            origin: Origin::Unknown,
            cgroup_id: 0,
            netns: 0,
            host_network: None,
            dst: ("169.254.169.254".parse().unwrap(), 80),
            bytes: 0,
            unreadable: false,
            outcome: Outcome::Unknown,
        }
    }

    fn key(port: u16) -> Key {
        (
            ("10.0.0.2".parse().unwrap(), port),
            ("169.254.169.254".parse().unwrap(), 80),
        )
    }

    fn response(port: u16, status: u16) -> Response {
        let (local, remote) = key(port);
        Response {
            status,
            local,
            remote,
        }
    }

    fn path(r: &Record) -> &str {
        r.request.path.as_deref().unwrap()
    }

    #[test]
    fn keep_alive_requests_are_answered_in_order() {
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10);
        let now = Instant::now();
        assert!(o.request(key(1000), record("/a"), now).is_none());
        assert!(o.request(key(1000), record("/b"), now).is_none());
        assert!(o.request(key(2000), record("/c"), now).is_none());
        let first = o.response(&response(1000, 200)).unwrap();
        assert_eq!((path(&first), first.status()), ("/a", Some(200)));
        let c = o.response(&response(2000, 404)).unwrap();
        assert_eq!((path(&c), c.status()), ("/c", Some(404)));
        let second = o.response(&response(1000, 401)).unwrap();
        assert_eq!((path(&second), second.status()), ("/b", Some(401)));
        assert!(o.response(&response(1000, 200)).is_none());
        assert_eq!((o.unmatched, o.waiting()), (1, 0));
    }

    /// A reset or a close ends the wait of the request on that connection, told apart from
    /// silence; after the last response a close is how connections end, not unmatched.
    #[test]
    fn reset_and_close_end_the_wait() {
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10);
        let now = Instant::now();
        o.request(key(1000), record("/a"), now);
        o.request(key(2000), record("/b"), now);
        let a = o.response(&response(1000, STATUS_RESET)).unwrap();
        assert_eq!((a.outcome, a.status()), (Outcome::Reset, None));
        assert_eq!(a.connection_end(), Some("reset"));
        let b = o.response(&response(2000, STATUS_CLOSED)).unwrap();
        assert_eq!(b.outcome, Outcome::Closed);
        assert!(o.response(&response(2000, STATUS_CLOSED)).is_none());
        assert_eq!(o.unmatched, 0);
        assert!(!b.token_not_received());
    }

    fn hop_drop(port: u16) -> HopDrop {
        let (local, remote) = key(port);
        HopDrop {
            ttl: 1,
            reason: Some(7),
            netns: 4026532001,
            local,
            remote,
        }
    }

    fn token_put() -> Record {
        let mut put = record("/");
        put.request = parse(
            b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\n\r\n",
        );
        put
    }

    /// A drop releases the token PUT waiting on its connection at once, as the drop class;
    /// the same loss reported again is counted, not written; a drop with no request is
    /// written on its own (Unmatched), once.
    #[test]
    fn a_drop_joins_its_token_put() {
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10);
        let now = Instant::now();
        o.request(key(1000), token_put(), now);
        o.request(key(2000), token_put(), now);
        let DropJoin::Matched(r) = o.hop_drop(&hop_drop(1000), now) else {
            panic!("not matched");
        };
        assert!(r.token_dropped() && !r.token_not_received());
        assert_eq!(r.class(), Class::V2TokenDropped);
        assert_eq!(r.level(), "WARNING");
        assert_eq!(
            r.dropped(),
            Some(&Dropped {
                ttl: 1,
                reason: Some("IP_INHDR"),
                netns: 4026532001
            })
        );
        assert_eq!(r.status(), None);
        assert!(matches!(o.hop_drop(&hop_drop(1000), now), DropJoin::Repeat));
        assert!(matches!(
            o.hop_drop(&hop_drop(3000), now),
            DropJoin::Unmatched
        ));
        assert!(matches!(o.hop_drop(&hop_drop(3000), now), DropJoin::Repeat));
        assert_eq!(
            (o.drops_matched, o.drops_unmatched, o.drops_repeated),
            (1, 1, 2)
        );
        // The other connection still waits, and its silence is the old warning.
        let out = o.expire(now + Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert!(out[0].token_not_received());
        // Long after, the same connection is news again.
        assert!(matches!(
            o.hop_drop(&hop_drop(1000), now + DROP_MEMORY + Duration::from_secs(1)),
            DropJoin::Unmatched
        ));
        let line = r.format(crate::output::Format::Text, "n");
        assert!(
            line.contains("[WARNING] imdsv2 token response dropped (hop limit) (pid:1:"),
            "{line}"
        );
        assert!(line.contains(" -> dropped "), "{line}");
        let json: serde_json::Value =
            serde_json::from_str(&r.format(crate::output::Format::Json, "n")).unwrap();
        assert_eq!(json["class"], "v2_token_dropped");
        assert_eq!(json["hop_drop"]["ttl"], 1);
        assert_eq!(json["hop_drop"]["reason"], "IP_INHDR");
        assert_eq!(json["hop_drop"]["netns"], 4026532001u32);
        assert!(json["status"].is_null() && json.get("connection").is_none());
    }

    #[test]
    fn unanswered_requests_expire_without_status() {
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10);
        let now = Instant::now();
        o.request(key(1000), record("/a"), now);
        o.request(key(1000), record("/b"), now + Duration::from_secs(1));
        assert!(o.expire(now + Duration::from_millis(1999)).is_empty());
        let out = o.expire(now + Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert_eq!((path(&out[0]), out[0].outcome), ("/a", Outcome::NoResponse));
        // The later one is still answered.
        assert_eq!(
            o.response(&response(1000, 200)).unwrap().status(),
            Some(200)
        );
        assert_eq!(o.waiting(), 0);
    }

    #[test]
    fn bounded_and_disabled_do_not_wait() {
        let now = Instant::now();
        let mut off = Outcomes::new(None, 10);
        let r = off.request(key(1), record("/"), now).unwrap();
        assert_eq!(r.outcome, Outcome::Unknown);

        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 2);
        assert!(o.request(key(1), record("/1"), now).is_none());
        assert!(o.request(key(2), record("/2"), now).is_none());
        assert!(o.request(key(3), record("/3"), now).is_some());
        assert_eq!(o.overflowed, 1);
        // No local port known: nothing to join by, written at once (not an overflow).
        assert!(o.request(key(0), record("/x"), now).is_some());
        assert_eq!(o.overflowed, 1);
        let left = o.drain();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|r| r.outcome == Outcome::Unknown));
        assert_eq!(o.waiting(), 0);
    }

    #[test]
    fn all_unanswered_is_reported_once_as_blind() {
        let mut o = Outcomes::new(Some(Duration::from_secs(1)), 100);
        let now = Instant::now();
        for port in 1..BLIND_AFTER as u16 {
            o.request(key(port), record("/"), now);
        }
        o.expire(now + Duration::from_secs(1));
        assert!(!o.blind(), "not yet");
        o.request(key(99), record("/"), now);
        o.expire(now + Duration::from_secs(1));
        assert!(o.blind());
        assert!(!o.blind(), "once");

        let mut seen = Outcomes::new(Some(Duration::from_secs(1)), 100);
        seen.request(key(1), record("/"), now);
        seen.response(&response(1, 200));
        for port in 2..40 {
            seen.request(key(port), record("/"), now);
        }
        seen.expire(now + Duration::from_secs(1));
        assert!(!seen.blind(), "one answer proves the path works");
    }

    #[test]
    fn token_put_without_response_is_the_hop_limit_warning() {
        let mut o = Outcomes::new(Some(Duration::from_secs(1)), 10);
        let now = Instant::now();
        let mut put = record("/");
        put.request = parse(
            b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\n\r\n",
        );
        o.request(key(5), put, now);
        let out = o.expire(now + Duration::from_secs(1));
        assert!(out[0].token_not_received());
        assert_eq!(out[0].level(), "WARNING");
        let line = out[0].format(crate::output::Format::Text, "n");
        assert!(
            line.contains("[WARNING] imdsv2 token response not received (hop limit?) (pid:1:"),
            "{line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&out[0].format(crate::output::Format::Json, "n")).unwrap();
        assert_eq!(json["class"], "v2_token_no_response");
        assert!(json["status"].is_null());
    }
}
