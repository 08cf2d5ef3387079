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
//!
//! An answer on a connection where no send was traced at all is evidence of a call the send
//! hooks missed (an MPTCP socket, TCP Fast Open data in the SYN with the tracepoint attach):
//! it is let out as [`Answer::Untraced`], once per connection. Not untraced: an answer on a
//! connection with a traced send in the last [`KNOWN_FOR`] (a response later than
//! `timeout`, whose request was written without it, still belongs to its connection); an
//! answer from a destination a send without a local port (the kernel could not read it)
//! went to within `timeout`; and any answer in the first `timeout` after start (its request
//! was sent before the programs were attached: the start marker already says calls before
//! it were not traced).

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

/// What a response does.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per response, matched at once: a Box would be an allocation per answer"
)]
pub(crate) enum Answer {
    /// It was the answer to this request, now to be written with its status.
    Request(Record),
    /// It answered a call on a connection where no send was traced: reported once per
    /// connection.
    Untraced(Response),
    /// Nothing to write (a late or extra answer on a traced connection, a connection's end,
    /// an untraced connection already reported).
    Nothing,
}

#[cfg(test)]
impl Answer {
    /// The request it answered, if any.
    fn request(self) -> Option<Record> {
        match self {
            Answer::Request(r) => Some(r),
            _ => None,
        }
    }
}

/// How long a connection is remembered as traced after its last traced send or answer: at
/// least this, at most twice this (two generations).
const KNOWN_FOR: Duration = Duration::from_secs(300);
/// Connections remembered per generation (a 4-tuple and an instant each, ~64 bytes): past
/// it the older generation is forgotten early. A connection forgotten too early can only
/// make a late answer look untraced (a false alarm), never hide a call.
const KNOWN_MAX: usize = 32 * 1024;
/// Sends without a local port whose answers are still awaited.
const PORTLESS_MAX: usize = 1024;

/// A set of connections with a time each, in two generations so that forgetting is O(1):
/// the current one is filled, and on [`Generations::rotate`] becomes the old one.
#[derive(Default)]
struct Generations {
    current: HashMap<Key, Instant>,
    old: HashMap<Key, Instant>,
    rotated: Option<Instant>,
}

impl Generations {
    fn insert(&mut self, key: Key, now: Instant) {
        if self.current.len() >= KNOWN_MAX {
            self.old = std::mem::take(&mut self.current);
            self.rotated = Some(now);
        }
        self.current.insert(key, now);
    }

    /// Whether `key` is in either generation; refreshed if so.
    fn touch(&mut self, key: Key, now: Instant) -> bool {
        if let Some(t) = self.current.get_mut(&key) {
            *t = now;
            return true;
        }
        if self.old.remove(&key).is_some() {
            self.insert(key, now);
            return true;
        }
        false
    }

    /// Forgets what was last seen more than [`KNOWN_FOR`] to twice that ago.
    fn rotate(&mut self, now: Instant) {
        let since = *self.rotated.get_or_insert(now);
        if now.duration_since(since) >= KNOWN_FOR {
            self.old = std::mem::take(&mut self.current);
            self.rotated = Some(now);
        }
    }
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
    /// Connections answered by IMDS where no send was traced ([`Answer::Untraced`]).
    pub untraced: u64,
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
    /// Connections with a traced send.
    known: Generations,
    /// Untraced connections already reported.
    reported: Generations,
    /// Destinations of sends without a local port, until when an answer from them is
    /// taken as theirs.
    portless: VecDeque<((IpAddr, u16), Instant)>,
    /// Until then, an answer on an unknown connection may be to a call sent before start.
    grace_until: Instant,
}

/// Unanswered requests, with not one answered since start, after which the response path
/// is suspected blind (see [`Outcomes::blind`]).
const BLIND_AFTER: u64 = 10;

impl Outcomes {
    /// `timeout` None: responses are not traced; every record is written at once.
    /// `now`: when the programs were attached (the start of the grace for answers to calls
    /// sent before).
    pub(crate) fn new(timeout: Option<Duration>, max_pending: usize, now: Instant) -> Self {
        Self {
            timeout,
            max_pending,
            pending: HashMap::new(),
            len: 0,
            overflowed: 0,
            unmatched: 0,
            untraced: 0,
            matched: 0,
            expired: 0,
            warned_blind: false,
            drops_seen: HashMap::new(),
            drops_matched: 0,
            drops_unmatched: 0,
            drops_repeated: 0,
            known: Generations::default(),
            reported: Generations::default(),
            portless: VecDeque::new(),
            grace_until: now + timeout.unwrap_or_default(),
        }
    }

    /// A send on connection `key` was traced (before its request is complete: a head still
    /// in reassembly is answered too, e.g. `400` to bytes that are not HTTP).
    pub(crate) fn sent(&mut self, key: Key, now: Instant) {
        let Some(timeout) = self.timeout else {
            return;
        };
        if key.0.1 == 0 {
            if self.portless.len() >= PORTLESS_MAX {
                self.portless.pop_front();
            }
            self.portless.push_back((key.1, now + timeout));
        } else if !self.known.touch(key, now) {
            self.known.insert(key, now);
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

    /// A response: the oldest request waiting on its connection, with its status; else
    /// whether it is evidence of an untraced call (see the module's docs).
    pub(crate) fn response(&mut self, response: &Response, now: Instant) -> Answer {
        let key = (response.local, response.remote);
        let end = match response.status {
            STATUS_RESET => Some(Outcome::Reset),
            STATUS_CLOSED => Some(Outcome::Closed),
            _ => None,
        };
        let queue = self.pending.get_mut(&key);
        let Some(p) = queue.and_then(VecDeque::pop_front) else {
            // A close after the last response is how connections end: not unmatched.
            if end.is_some() {
                return Answer::Nothing;
            }
            self.unmatched += 1;
            return self.unmatched_answer(response, now);
        };
        self.known.touch(key, now);
        if self.pending.get(&key).is_some_and(VecDeque::is_empty) {
            self.pending.remove(&key);
        }
        self.len -= 1;
        self.matched += 1;
        let mut record = p.record;
        record.outcome = end.unwrap_or(Outcome::Status(response.status));
        Answer::Request(record)
    }

    fn unmatched_answer(&mut self, response: &Response, now: Instant) -> Answer {
        let key = (response.local, response.remote);
        if self.known.touch(key, now) || now < self.grace_until {
            return Answer::Nothing;
        }
        if let Some(i) = self
            .portless
            .iter()
            .position(|&(dst, until)| dst == response.remote && now <= until)
        {
            self.portless.remove(i);
            return Answer::Nothing;
        }
        if self.reported.touch(key, now) {
            return Answer::Nothing;
        }
        self.reported.insert(key, now);
        self.untraced += 1;
        Answer::Untraced(*response)
    }

    /// The 1 s tick's upkeep of what is remembered about connections.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.known.rotate(now);
        self.reported.rotate(now);
        while self.portless.front().is_some_and(|&(_, until)| until < now) {
            self.portless.pop_front();
        }
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
            ts_ns: 0,
        }
    }

    fn path(r: &Record) -> &str {
        r.request.path.as_deref().unwrap()
    }

    #[test]
    fn keep_alive_requests_are_answered_in_order() {
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, now);
        assert!(o.request(key(1000), record("/a"), now).is_none());
        assert!(o.request(key(1000), record("/b"), now).is_none());
        assert!(o.request(key(2000), record("/c"), now).is_none());
        let first = o.response(&response(1000, 200), now).request().unwrap();
        assert_eq!((path(&first), first.status()), ("/a", Some(200)));
        let c = o.response(&response(2000, 404), now).request().unwrap();
        assert_eq!((path(&c), c.status()), ("/c", Some(404)));
        let second = o.response(&response(1000, 401), now).request().unwrap();
        assert_eq!((path(&second), second.status()), ("/b", Some(401)));
        assert!(o.response(&response(1000, 200), now).request().is_none());
        assert_eq!((o.unmatched, o.waiting()), (1, 0));
    }

    /// A reset or a close ends the wait of the request on that connection, told apart from
    /// silence; after the last response a close is how connections end, not unmatched.
    #[test]
    fn reset_and_close_end_the_wait() {
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, now);
        o.request(key(1000), record("/a"), now);
        o.request(key(2000), record("/b"), now);
        let a = o
            .response(&response(1000, STATUS_RESET), now)
            .request()
            .unwrap();
        assert_eq!((a.outcome, a.status()), (Outcome::Reset, None));
        assert_eq!(a.connection_end(), Some("reset"));
        let b = o
            .response(&response(2000, STATUS_CLOSED), now)
            .request()
            .unwrap();
        assert_eq!(b.outcome, Outcome::Closed);
        assert!(
            o.response(&response(2000, STATUS_CLOSED), now)
                .request()
                .is_none()
        );
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
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, now);
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
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, now);
        o.request(key(1000), record("/a"), now);
        o.request(key(1000), record("/b"), now + Duration::from_secs(1));
        assert!(o.expire(now + Duration::from_millis(1999)).is_empty());
        let out = o.expire(now + Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert_eq!((path(&out[0]), out[0].outcome), ("/a", Outcome::NoResponse));
        // The later one is still answered.
        assert_eq!(
            o.response(&response(1000, 200), now)
                .request()
                .unwrap()
                .status(),
            Some(200)
        );
        assert_eq!(o.waiting(), 0);
    }

    #[test]
    fn bounded_and_disabled_do_not_wait() {
        let now = Instant::now();
        let mut off = Outcomes::new(None, 10, now);
        let r = off.request(key(1), record("/"), now).unwrap();
        assert_eq!(r.outcome, Outcome::Unknown);

        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 2, now);
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
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(1)), 100, now);
        for port in 1..BLIND_AFTER as u16 {
            o.request(key(port), record("/"), now);
        }
        o.expire(now + Duration::from_secs(1));
        assert!(!o.blind(), "not yet");
        o.request(key(99), record("/"), now);
        o.expire(now + Duration::from_secs(1));
        assert!(o.blind());
        assert!(!o.blind(), "once");

        let mut seen = Outcomes::new(Some(Duration::from_secs(1)), 100, now);
        seen.request(key(1), record("/"), now);
        seen.response(&response(1, 200), now).request();
        for port in 2..40 {
            seen.request(key(port), record("/"), now);
        }
        seen.expire(now + Duration::from_secs(1));
        assert!(!seen.blind(), "one answer proves the path works");
    }

    #[test]
    fn token_put_without_response_is_the_hop_limit_warning() {
        let now = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(1)), 10, now);
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

    fn untraced(a: Answer) -> Option<Response> {
        match a {
            Answer::Untraced(r) => Some(r),
            _ => None,
        }
    }

    /// An answer on a connection with no traced send is reported, once per connection;
    /// a connection's end is not an answer.
    #[test]
    fn an_answer_on_an_untraced_connection_is_reported_once() {
        let start = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, start);
        let now = start + Duration::from_secs(3);
        let r = untraced(o.response(&response(4000, 200), now)).unwrap();
        assert_eq!((r.status, r.local.1), (200, 4000));
        assert!(untraced(o.response(&response(4000, 404), now)).is_none());
        assert!(untraced(o.response(&response(4001, STATUS_RESET), now)).is_none());
        assert!(untraced(o.response(&response(4001, STATUS_CLOSED), now)).is_none());
        assert_eq!(
            untraced(o.response(&response(4002, 401), now)).map(|r| r.status),
            Some(401)
        );
        assert_eq!((o.untraced, o.unmatched), (2, 3));
        // Still once per connection after the reported set rotates.
        o.sweep(now + KNOWN_FOR);
        assert!(untraced(o.response(&response(4000, 200), now + KNOWN_FOR)).is_none());
    }

    /// A response that comes after its request was written without it (the wait was over)
    /// still belongs to its connection: not untraced. So does an answer to a head still in
    /// reassembly (its send was seen), for a while after the last send.
    #[test]
    fn a_late_answer_on_a_traced_connection_is_not_untraced() {
        let start = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(1)), 10, start);
        let now = start + Duration::from_secs(5);
        o.sent(key(5000), now);
        o.request(key(5000), record("/a"), now);
        let out = o.expire(now + Duration::from_secs(1));
        assert_eq!(out[0].outcome, Outcome::NoResponse);
        let late = now + Duration::from_secs(30);
        o.sweep(late);
        assert!(matches!(
            o.response(&response(5000, 200), late),
            Answer::Nothing
        ));
        o.sent(key(5001), now);
        assert!(matches!(
            o.response(&response(5001, 400), now),
            Answer::Nothing
        ));
        // Forgotten only after two rotations without a send or an answer.
        o.sweep(late + KNOWN_FOR);
        o.sweep(late + KNOWN_FOR * 2);
        assert!(untraced(o.response(&response(5001, 200), late + KNOWN_FOR * 2)).is_some());
        assert_eq!(o.untraced, 1);
    }

    /// In the first `timeout` after start, an answer may be to a call sent before the
    /// programs were attached: not reported. A send whose local port the kernel could not
    /// read takes the next unknown answer from its destination within `timeout`.
    #[test]
    fn answers_to_calls_before_start_and_to_portless_sends_are_not_untraced() {
        let start = Instant::now();
        let mut o = Outcomes::new(Some(Duration::from_secs(2)), 10, start);
        let early = start + Duration::from_secs(1);
        assert!(matches!(
            o.response(&response(6000, 200), early),
            Answer::Nothing
        ));
        let now = start + Duration::from_secs(10);
        o.sent(key(0), now);
        assert!(matches!(
            o.response(&response(6001, 200), now),
            Answer::Nothing
        ));
        assert!(untraced(o.response(&response(6002, 200), now)).is_some());
        o.sent(key(0), now);
        let after = now + Duration::from_secs(3);
        o.sweep(after);
        assert!(untraced(o.response(&response(6003, 200), after)).is_some());
        assert_eq!(o.untraced, 2);
    }
}
