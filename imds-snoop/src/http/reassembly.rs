//! Per-socket reassembly: turns the send snippets of each socket into one [`Request`] per
//! HTTP request, across sends (a head in several sends, several requests in one, bodies
//! passed over), with bounded memory (bytes per head, sockets kept, time to complete).
//!
//! Wire bytes: no slice or index here can panic (the room's `string_slice`, and
//! `indexing_slicing` in this file).
#![warn(clippy::indexing_slicing)]

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    Request,
    parse::{Body, malformed, parse_head, parse_partial, trim_ows},
};
use crate::redact::TOKEN_HEADER;

/// Sockets with state kept at once; past it, the oldest is evicted (its request emitted).
const MAX_SOCKETS: usize = 4096;

/// Whether raw bytes end inside a token header (its name, or its value, cut by the end of
/// the send): then the socket's next bytes up to a line end may be the token.
fn token_line_open(data: &[u8]) -> bool {
    let line_start = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = data.get(line_start..).unwrap_or_default();
    let name = TOKEN_HEADER.as_bytes();
    // The whole name, then (optional blanks and) a colon: the value may go on.
    let named = last.windows(name.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(name) && {
            let after = trim_ows(last.get(i + name.len()..).unwrap_or_default());
            after.first().is_none_or(|&b| b == b':')
        }
    });
    // The name cut short: the line ends with a proper prefix of it.
    named
        || (1..name.len()).any(|n| {
            let tail = last.len().checked_sub(n).and_then(|at| last.get(at..));
            tail.zip(name.get(..n))
                .is_some_and(|(tail, prefix)| tail.eq_ignore_ascii_case(prefix))
        })
}

/// Skipping bytes that belong to no request we can log (the rest of an oversized head, a
/// chunked body) up to the end of the next header block: a blank line.
#[derive(Debug, Default)]
struct Skip {
    /// 0: mid-line, 1: just after `\n`, 2: just after `\n\r`.
    state: u8,
}

impl Skip {
    /// Where in `data` the skipped part ends (just after the blank line), if it does.
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            self.state = match (self.state, b) {
                (1 | 2, b'\n') => {
                    self.state = 0;
                    return Some(i + 1);
                }
                (1, b'\r') => 2,
                (_, b'\n') => 1,
                _ => 0,
            };
        }
        None
    }
}

/// Passing over a chunked body by its framing (RFC 9112 section 7.1: size lines, data,
/// trailers), not to the first blank line: chunk data is the caller's, and a blank line in
/// it followed by a head with a `Content-Length` made the rest of the body, and a v1 request
/// after it, look like that head's body (issue 16's attack round). Framing that is not
/// chunked falls back to the blank-line [`Skip`].
#[derive(Debug)]
enum Chunked {
    /// A chunk-size line: the size so far (hex digits), whether an extension or blank began.
    Size { size: u64, digits: u8, ext: bool },
    /// Bytes of chunk data still to come.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to a blank line; `empty`: the line so far is.
    Trailer { empty: bool },
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            size: 0,
            digits: 0,
            ext: false,
        }
    }
}

impl Chunked {
    /// Where in `data` the body ends (just after its last line), `Ok(None)` if not in it,
    /// `Err(())` if the bytes are not chunked framing.
    fn scan(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while let Some(&b) = data.get(i) {
            *self = match (&*self, b) {
                (Chunked::Data(left), _) => {
                    let take = (data.len() - i).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    continue;
                }
                (&Chunked::Size { size, digits, .. }, b'\n') => match (digits, size) {
                    (0, _) => return Err(()),
                    (_, 0) => Chunked::Trailer { empty: true },
                    _ => Chunked::Data(size),
                },
                (
                    &Chunked::Size {
                        size,
                        digits,
                        ext: false,
                    },
                    _,
                ) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    let size = size.checked_mul(16).ok_or(())? + digit;
                    Chunked::Size {
                        size,
                        digits: digits.saturating_add(1),
                        ext: false,
                    }
                }
                (&Chunked::Size { size, digits, .. }, b';' | b' ' | b'\t' | b'\r')
                    if digits > 0 =>
                {
                    Chunked::Size {
                        size,
                        digits,
                        ext: true,
                    }
                }
                (
                    &Chunked::Size {
                        size,
                        digits,
                        ext: true,
                    },
                    _,
                ) => Chunked::Size {
                    size,
                    digits,
                    ext: true,
                },
                (Chunked::Size { .. }, _) => return Err(()),
                (Chunked::DataEnd, b'\r') => Chunked::DataEnd,
                (Chunked::DataEnd, b'\n') => Chunked::default(),
                (Chunked::DataEnd, _) => return Err(()),
                (&Chunked::Trailer { empty: true }, b'\n') => return Ok(Some(i + 1)),
                (Chunked::Trailer { .. }, b'\n') => Chunked::Trailer { empty: true },
                (&Chunked::Trailer { empty }, b'\r') => Chunked::Trailer { empty },
                (Chunked::Trailer { .. }, _) => Chunked::Trailer { empty: false },
            };
            i += 1;
        }
        Ok(None)
    }
}

/// Whether a send starts like a new request (`METHOD SP /...`): ends a skip early, so that
/// the request after an oversized one is not lost.
fn looks_like_request_start(data: &[u8]) -> bool {
    let Some(sp) = data.iter().take(17).position(|&b| b == b' ') else {
        return false;
    };
    sp > 0
        && data
            .get(..sp)
            .is_some_and(|method| method.iter().all(u8::is_ascii_uppercase))
        && matches!(data.get(sp + 1), Some(b'/' | b'*' | b'h' | b'H'))
}

/// A request whose head has not ended yet.
struct Pending<T> {
    /// Context of the request's first send.
    ctx: T,
    buf: Vec<u8>,
    first_seen: Instant,
}

/// What we remember about one socket between sends.
struct Socket<T> {
    pending: Option<Pending<T>>,
    /// Body bytes of an already emitted request still to come.
    body_left: usize,
    skip: Option<Skip>,
    /// Passing over a chunked body (by its framing).
    chunked: Option<Chunked>,
    redact_first_line: bool,
    last_seen: Instant,
}

/// Where a request found in a send starts: the context and time of the send it started in,
/// and whether its first line may be the tail of a token (see [`Socket::begin_send`]).
struct Start<T> {
    ctx: T,
    first_seen: Instant,
    first_line_redacted: bool,
}

/// What [`Socket::pass_over`] made of the bytes at the read position.
enum Passed {
    /// Nothing to pass over: a request may start here.
    Nothing,
    /// This many bytes belong to no new request (a body, the end of a skipped head).
    Bytes(usize),
    /// All of the rest is skipped; the skip goes on in the socket's next send.
    Rest,
}

impl<T> Socket<T> {
    fn new(now: Instant) -> Self {
        Socket {
            pending: None,
            body_left: 0,
            skip: None,
            chunked: None,
            redact_first_line: false,
            last_seen: now,
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_none()
            && self.body_left == 0
            && self.skip.is_none()
            && self.chunked.is_none()
            && !self.redact_first_line
    }

    /// A send arrives: a skip ends early if the send starts like a new request (so the
    /// request after an oversized one is not lost). Returns whether the send's first line
    /// may be the tail of a token cut at the end of the previous send.
    fn begin_send(&mut self, bytes: &[u8], now: Instant) -> bool {
        self.last_seen = now;
        if self.skip.is_some() && self.body_left == 0 && looks_like_request_start(bytes) {
            self.skip = None;
        }
        std::mem::take(&mut self.redact_first_line)
    }

    /// A pending head goes on with these bytes (and carries its first send's context and
    /// time); otherwise they stand alone.
    fn join_pending<'b>(&mut self, bytes: &'b [u8]) -> (Option<(T, Instant)>, Cow<'b, [u8]>) {
        match self.pending.take() {
            Some(p) => {
                let mut buf = p.buf;
                buf.extend_from_slice(bytes);
                (Some((p.ctx, p.first_seen)), Cow::Owned(buf))
            }
            None => (None, Cow::Borrowed(bytes)),
        }
    }

    /// Bytes at the start of `rest` that belong to no new request: the rest of an emitted
    /// request's body, or bytes skipped up to the next blank line.
    fn pass_over(&mut self, rest: &[u8]) -> Passed {
        if self.body_left > 0 {
            let n = self.body_left.min(rest.len());
            self.body_left -= n;
            return Passed::Bytes(n);
        }
        if let Some(chunked) = self.chunked.as_mut() {
            match chunked.scan(rest) {
                Ok(Some(n)) => {
                    self.chunked = None;
                    return Passed::Bytes(n);
                }
                Ok(None) => return Passed::Rest,
                // Not chunked framing after all: up to a blank line, as before.
                Err(()) => {
                    self.chunked = None;
                    self.skip = Some(Skip::default());
                }
            }
        }
        if let Some(skip) = self.skip.as_mut() {
            return match skip.scan(rest) {
                Some(n) => {
                    self.skip = None;
                    Passed::Bytes(n)
                }
                None => Passed::Rest,
            };
        }
        Passed::Nothing
    }

    /// Takes the request at the start of `rest` into `out`. `Some(n)`: a complete head of
    /// `n` bytes (its body, if any, is passed over next); `None`: the rest of the data is
    /// spoken for (kept pending, emitted truncated or malformed, or skipped).
    fn take_request(
        &mut self,
        rest: &[u8],
        start: Start<T>,
        max: usize,
        snippet_truncated: bool,
        out: &mut Vec<(T, Request)>,
    ) -> Option<usize> {
        let Start {
            ctx,
            first_seen,
            first_line_redacted,
        } = start;
        match parse_head(rest) {
            Ok(Some((mut req, body))) => {
                let head_len = req.bytes;
                match body {
                    Body::None => {}
                    Body::Length(len) => {
                        req.bytes += len;
                        self.body_left = len;
                    }
                    Body::Chunked => self.chunked = Some(Chunked::default()),
                }
                out.push((ctx, req));
                Some(head_len)
            }
            Ok(None) if rest.len() > max => {
                // Over the bound: emit what we have, and skip the rest of this head.
                // `rest` is longer than `max` here.
                let mut req = parse_partial(rest.get(..max).unwrap_or(rest), first_line_redacted);
                req.bytes = rest.len();
                let mut skip = Skip::default();
                // Seeds the blank-line search with how the bytes so far end.
                let _ = skip.scan(rest.get(rest.len().saturating_sub(2)..).unwrap_or(rest));
                self.skip = Some(skip);
                self.redact_first_line = token_line_open(rest);
                out.push((ctx, req));
                None
            }
            Ok(None) if snippet_truncated => {
                out.push((ctx, parse_partial(rest, first_line_redacted)));
                None
            }
            Ok(None) => {
                self.pending = Some(Pending {
                    ctx,
                    buf: rest.to_vec(),
                    first_seen,
                });
                None
            }
            Err(e) => {
                // No way to find where this ends: the rest of the send is one malformed
                // request, and the socket's next send starts afresh.
                self.redact_first_line = token_line_open(rest);
                let error = format!("invalid HTTP: {e}");
                out.push((ctx, malformed(rest, error, false, first_line_redacted)));
                None
            }
        }
    }

    /// The send is done. If the kernel cut it (`snippet_truncated`), whatever it held past
    /// what we saw (the rest of a body, of a token) is unknown: the next send starts afresh.
    fn end_send(&mut self, snippet_truncated: bool) {
        if snippet_truncated {
            self.body_left = 0;
            self.skip = None;
            self.chunked = None;
            self.redact_first_line = false;
        }
    }
}

/// Reassembles requests per socket from send snippets (a request's headers may come in
/// several sends), keeping the context `T` of the first send of each request.
pub struct Reassembler<T> {
    max_request_bytes: usize,
    ttl: Duration,
    max_sockets: usize,
    sockets: HashMap<u64, Socket<T>>,
}

impl<T: Clone> Reassembler<T> {
    /// `max_request_bytes`: bound on a head kept per socket (over it, the request is emitted
    /// truncated); `ttl`: how long a head may take to complete.
    pub fn new(max_request_bytes: usize, ttl: Duration) -> Self {
        Self {
            max_request_bytes: max_request_bytes.max(1),
            ttl,
            max_sockets: MAX_SOCKETS,
            sockets: HashMap::new(),
        }
    }

    /// `key`: socket identity. `ctx`: context of this send (cloned for each request that
    /// starts in it). `bytes`: the payload snippet of one send. `snippet_truncated`: the
    /// kernel copied fewer bytes than the send had, so what follows in this send is unknown:
    /// what we have is parsed, a request cut there is emitted truncated, and the socket's
    /// state is dropped. Returns every request complete now (several for pipelined requests),
    /// each with its context; also those evicted to make room for a new socket.
    pub fn push(
        &mut self,
        key: u64,
        ctx: T,
        bytes: &[u8],
        snippet_truncated: bool,
        now: Instant,
    ) -> Vec<(T, Request)> {
        self.push_send(key, ctx, bytes, snippet_truncated, None, now)
    }

    /// [`Self::push`], knowing how many bytes of the send the kernel did not copy
    /// (`unseen`: the send's size less the snippet's). When the snippet ended between
    /// requests, or inside a body shorter than what was not copied, the bytes past it start
    /// another request that nobody sees: a caller pipelines a request behind a long one
    /// (`GET` with a body, a token `PUT` with a body) to hide it, and IMDS answers both. That
    /// part is then logged as a malformed call (nothing to classify it by), so it is never
    /// evidence of IMDSv2 (issue 16's attack round).
    pub fn push_send(
        &mut self,
        key: u64,
        ctx: T,
        bytes: &[u8],
        snippet_truncated: bool,
        unseen: Option<usize>,
        now: Instant,
    ) -> Vec<(T, Request)> {
        let mut out = Vec::new();
        if !self.sockets.contains_key(&key) && self.sockets.len() >= self.max_sockets {
            self.make_room(now, &mut out);
        }
        let max = self.max_request_bytes;
        let sock = self.sockets.entry(key).or_insert_with(|| Socket::new(now));
        let redact_first_line = sock.begin_send(bytes, now);
        let (mut carried, data) = sock.join_pending(bytes);

        let mut off = 0;
        // Whether the snippet ended between requests or inside a known body (not inside a
        // head, a skipped head or a chunked body, whose ends are unknown).
        let mut at_boundary = true;
        while off < data.len() {
            // `off < data.len()`: the rest is never empty.
            let rest = data.get(off..).unwrap_or_default();
            match sock.pass_over(rest) {
                Passed::Nothing => {}
                Passed::Bytes(n) => {
                    off += n;
                    continue;
                }
                Passed::Rest => {
                    at_boundary = false;
                    break;
                }
            }
            // Blank lines between requests (after a body, say) are no request.
            if rest.iter().all(|&b| b == b'\r' || b == b'\n') {
                break;
            }
            // The carried context belongs to the request at the start of the data only.
            let (ctx, first_seen) = carried.take().unwrap_or_else(|| (ctx.clone(), now));
            let start = Start {
                ctx,
                first_seen,
                first_line_redacted: redact_first_line && off == 0,
            };
            match sock.take_request(rest, start, max, snippet_truncated, &mut out) {
                Some(n) => off += n,
                None => {
                    at_boundary = false;
                    break;
                }
            }
        }
        if snippet_truncated
            && at_boundary
            && sock.skip.is_none()
            && sock.chunked.is_none()
            && let Some(unseen) = unseen
            && unseen > sock.body_left
        {
            out.push((
                ctx,
                Request::malformed_call(
                    "a request past the part of the send the kernel copied".to_string(),
                    true,
                    unseen - sock.body_left,
                    None,
                ),
            ));
        }

        sock.end_send(snippet_truncated);
        if sock.is_idle() {
            self.sockets.remove(&key);
        }
        out
    }

    /// Requests whose heads did not complete within `ttl` of their first send, emitted
    /// truncated (classified from what was seen; malformed if nothing parses). Also forgets
    /// sockets idle for `ttl`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(T, Request)> {
        let ttl = self.ttl;
        let mut out = Vec::new();
        self.sockets.retain(|_, sock| {
            let stale = sock
                .pending
                .take_if(|p| now.saturating_duration_since(p.first_seen) >= ttl);
            if let Some(p) = stale {
                out.push(emit_pending(sock, p));
            }
            sock.pending.is_some() || now.saturating_duration_since(sock.last_seen) < ttl
        });
        out
    }

    /// Everything pending, at shutdown.
    pub fn drain(&mut self) -> Vec<(T, Request)> {
        let mut out = Vec::new();
        for (_, mut sock) in self.sockets.drain() {
            if let Some(p) = sock.pending.take() {
                out.push(emit_pending(&mut sock, p));
            }
        }
        out
    }

    /// Requests whose heads have not completed yet (the `http_reassembly` fuzz target
    /// checks that a drain leaves none).
    pub fn pending(&self) -> usize {
        self.sockets
            .values()
            .filter(|s| s.pending.is_some())
            .count()
    }

    /// Bounded memory: expire what is due, and if that freed nothing, evict the socket
    /// seen longest ago (emitting its pending request).
    fn make_room(&mut self, now: Instant, out: &mut Vec<(T, Request)>) {
        out.extend(self.expire(now));
        if self.sockets.len() < self.max_sockets {
            return;
        }
        let oldest = self
            .sockets
            .iter()
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(&k, _)| k);
        if let Some(mut sock) = oldest.and_then(|k| self.sockets.remove(&k))
            && let Some(p) = sock.pending.take()
        {
            out.push(emit_pending(&mut sock, p));
        }
    }

    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.sockets
            .values()
            .filter_map(|s| s.pending.as_ref())
            .map(|p| p.buf.len())
            .sum()
    }
}

/// A pending head given up on (timed out, evicted, shutdown).
fn emit_pending<T>(sock: &mut Socket<T>, p: Pending<T>) -> (T, Request) {
    let redact_first_line = std::mem::take(&mut sock.redact_first_line);
    sock.redact_first_line = token_line_open(&p.buf);
    (p.ctx, parse_partial(&p.buf, redact_first_line))
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index what they just checked; a panic there is a failed test"
)]
mod tests {
    use super::*;
    use crate::http::{Class, TOKEN_REDACTED};

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/requests/",
                $name
            ))
            .as_slice()
        };
    }

    /// The fake token the fixtures carry (see tests/fixtures/requests/capture.py).
    const TOKEN: &str = "AQAEAFakeTokenValueImdsSnoopFixture0123456789abcdefghi==";

    const FIXTURES: &[(&str, &[u8], Class)] = &[
        (
            "curl-v1-get-meta-data",
            fixture!("curl-v1-get-meta-data.http"),
            Class::V1,
        ),
        (
            "curl-v2-token-put",
            fixture!("curl-v2-token-put.http"),
            Class::V2Token,
        ),
        (
            "curl-v2-get-meta-data",
            fixture!("curl-v2-get-meta-data.http"),
            Class::V2,
        ),
        (
            "botocore-v2-token-put",
            fixture!("botocore-v2-token-put.http"),
            Class::V2Token,
        ),
        (
            "botocore-v2-get-role-list",
            fixture!("botocore-v2-get-role-list.http"),
            Class::V2,
        ),
        (
            "botocore-v2-get-role-creds",
            fixture!("botocore-v2-get-role-creds.http"),
            Class::V2,
        ),
        (
            "botocore-v1-fallback-token-put",
            fixture!("botocore-v1-fallback-token-put.http"),
            Class::V2Token,
        ),
        (
            "botocore-v1-fallback-get-role-list",
            fixture!("botocore-v1-fallback-get-role-list.http"),
            Class::V1,
        ),
        (
            "botocore-v1-fallback-get-role-creds",
            fixture!("botocore-v1-fallback-get-role-creds.http"),
            Class::V1,
        ),
        (
            "node-sdk-v2-token-put",
            fixture!("node-sdk-v2-token-put.http"),
            Class::V2Token,
        ),
        (
            "node-sdk-v2-get-role-list",
            fixture!("node-sdk-v2-get-role-list.http"),
            Class::V2,
        ),
        (
            "node-sdk-v2-get-role-creds",
            fixture!("node-sdk-v2-get-role-creds.http"),
            Class::V2,
        ),
        (
            "node-sdk-v1-fallback-token-put",
            fixture!("node-sdk-v1-fallback-token-put.http"),
            Class::V2Token,
        ),
        (
            "node-sdk-v1-fallback-get-role-list",
            fixture!("node-sdk-v1-fallback-get-role-list.http"),
            Class::V1,
        ),
        (
            "node-sdk-v1-fallback-get-role-creds",
            fixture!("node-sdk-v1-fallback-get-role-creds.http"),
            Class::V1,
        ),
    ];

    const CURL_V1: &[u8] = fixture!("curl-v1-get-meta-data.http");
    const CURL_V2: &[u8] = fixture!("curl-v2-get-meta-data.http");
    const BOTO_V2: &[u8] = fixture!("botocore-v2-get-role-creds.http");

    fn reassembler() -> Reassembler<u32> {
        Reassembler::new(16 * 1024, Duration::from_secs(5))
    }

    /// Pushes `sends` in order on socket 1 (context: the send's index); all results.
    fn push_all(r: &mut Reassembler<u32>, sends: &[&[u8]], now: Instant) -> Vec<(u32, Request)> {
        let mut out = Vec::new();
        for (i, s) in sends.iter().enumerate() {
            out.extend(r.push(1, i as u32, s, false, now));
        }
        out
    }

    fn one(bytes: &[u8]) -> Request {
        let mut out = reassembler().push(1, 0, bytes, false, Instant::now());
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0).1
    }

    fn assert_no_token(req: &Request) {
        let details = req.details();
        assert!(!details.contains(TOKEN), "{details}");
        assert!(
            !details.to_lowercase().contains(&TOKEN.to_lowercase()),
            "{details}"
        );
        assert!(!format!("{req:?}").contains(TOKEN), "{req:?}");
        for (n, v) in &req.headers {
            assert!(!v.contains(TOKEN), "{n}: {v}");
        }
    }

    /// Issue 16's attack round: one send holds a v2 request (or a token PUT) with a body
    /// longer than the kernel copies, then a v1 request. The snippet ends inside the body;
    /// the v1 request lies past it. IMDS answers both: the part not seen must be a call of
    /// its own (malformed: nothing to classify it by), never nothing.
    #[test]
    fn a_request_past_the_copied_snippet_is_a_call_not_nothing() {
        let hidden = b"GET /latest/meta-data/iam/security-credentials/r HTTP/1.1\r\n\r\n";
        for head in [
            &b"GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: x\r\n"[..],
            &b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n"[..],
        ] {
            let body = 3000;
            let mut send = head.to_vec();
            send.extend_from_slice(format!("Content-Length: {body}\r\n\r\n").as_bytes());
            send.resize(send.len() + body, b'x');
            send.extend_from_slice(hidden);
            let copied = 2048;
            let snippet = &send[..copied];
            let out = reassembler().push_send(
                1,
                0,
                snippet,
                true,
                Some(send.len() - copied),
                Instant::now(),
            );
            assert_eq!(out.len(), 2, "{out:?}");
            assert_ne!(out[0].1.class, Class::V1, "{out:?}");
            assert_eq!(out[1].1.class, Class::Malformed, "{out:?}");
            assert_eq!(out[1].1.bytes, hidden.len(), "{out:?}");
            assert!(out[1].1.truncated, "{out:?}");
        }
    }

    /// A send cut inside a body that goes on past its end, or inside a head, is no hidden
    /// request: nothing is added (a long head is already logged truncated).
    #[test]
    fn a_snippet_cut_inside_a_body_or_head_adds_nothing() {
        let mut send = b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec();
        send.resize(send.len() + 5000, b'x');
        let out = reassembler().push_send(
            1,
            0,
            &send[..2048],
            true,
            Some(send.len() - 2048),
            Instant::now(),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        head.resize(3000, b'p');
        head.extend_from_slice(b"\r\n\r\n");
        let out = reassembler().push_send(
            1,
            0,
            &head[..2048],
            true,
            Some(head.len() - 2048),
            Instant::now(),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].1.truncated, "{out:?}");
    }

    #[test]
    fn fixtures_are_classified() {
        for &(name, bytes, class) in FIXTURES {
            let req = one(bytes);
            assert_eq!(req.class, class, "{name}: {req:?}");
            assert!(!req.truncated, "{name}");
            assert_eq!(req.error, None, "{name}");
            assert_eq!(req.bytes, bytes.len(), "{name}");
            assert_eq!(req.version, Some(1), "{name}");
            assert!(req.details().ends_with(','), "{name}");
            assert_no_token(&req);
        }
    }

    #[test]
    fn fixtures_hold_the_token() {
        // Otherwise the redaction tests prove nothing.
        let with_token = FIXTURES
            .iter()
            .filter(|(_, b, _)| String::from_utf8_lossy(b).contains(TOKEN))
            .count();
        assert_eq!(with_token, 5);
    }

    #[test]
    fn details_like_the_anchor() {
        assert_eq!(
            one(CURL_V1).details(),
            "get /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/7.88.1, accept: */*,"
        );
        assert_eq!(
            one(CURL_V2).details(),
            "get /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/7.88.1, accept: */*, **token redacted**,"
        );
        assert_eq!(
            one(BOTO_V2).details(),
            "get /latest/meta-data/iam/security-credentials/my-eks-node-role http/1.1, host: 127.0.0.1:18169, \
             accept-encoding: identity, **token redacted**, user-agent: botocore/1.43.11 python/3.11.7 linux/6.18.44-fc-v782,"
        );
    }

    #[test]
    fn headers_as_sent_and_redacted() {
        let req = one(BOTO_V2);
        assert_eq!(req.method.as_deref(), Some("GET"));
        assert_eq!(
            req.path.as_deref(),
            Some("/latest/meta-data/iam/security-credentials/my-eks-node-role")
        );
        assert_eq!(req.headers[2].0, "x-aws-ec2-metadata-token");
        assert_eq!(req.header("X-AWS-EC2-METADATA-TOKEN"), Some(TOKEN_REDACTED));
        assert_eq!(
            req.header("user-agent"),
            Some("Botocore/1.43.11 Python/3.11.7 Linux/6.18.44-fc-v782")
        );
        assert_eq!(req.header("nope"), None);
    }

    #[test]
    fn classification_rules() {
        let r = |s: &str| one(s.as_bytes()).class;
        assert_eq!(
            r("PUT /latest/api/token?x=1 HTTP/1.1\r\n\r\n"),
            Class::V2Token
        );
        assert_eq!(
            r("PUT http://169.254.169.254/latest/api/token HTTP/1.1\r\n\r\n"),
            Class::V2Token
        );
        assert_eq!(r("GET /latest/api/token HTTP/1.1\r\n\r\n"), Class::V1);
        assert_eq!(r("PUT /latest/api/tokens HTTP/1.1\r\n\r\n"), Class::V1);
        assert_eq!(
            r("GET / HTTP/1.0\r\nX-AWS-EC2-METADATA-TOKEN: t\r\n\r\n"),
            Class::V2
        );
        assert_eq!(
            r("GET / HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 5\r\n\r\n"),
            Class::V1
        );
        assert_eq!(r("GET / HTTP/2.0\r\n\r\n"), Class::Malformed);
        assert_eq!(Class::V1.label(), "imdsv1(!)");
        assert_eq!(Class::V2.label(), "imdsv2");
        assert_eq!(Class::V2Token.label(), "imdsv2(token)");
        assert_eq!(Class::Malformed.label(), "malformed(!)");
        assert_eq!(Class::V2Token.json(), "v2_token");
    }

    #[test]
    fn headers_split_across_2_and_10_sends() {
        let now = Instant::now();
        for parts in [2, 10] {
            let chunk = CURL_V2.len().div_ceil(parts);
            let sends: Vec<&[u8]> = CURL_V2.chunks(chunk).collect();
            assert_eq!(sends.len(), parts);
            let mut r = reassembler();
            let mut out = Vec::new();
            for (i, s) in sends.iter().enumerate() {
                out.extend(r.push(7, i as u32, s, false, now));
                // Nothing is emitted before the head is whole.
                assert_eq!(out.is_empty(), i + 1 < parts);
            }
            assert_eq!(out.len(), 1);
            let (ctx, req) = &out[0];
            assert_eq!(*ctx, 0, "context of the first send");
            assert_eq!(req.class, Class::V2);
            assert!(!req.truncated);
            assert_eq!(req, &one(CURL_V2));
            assert_no_token(req);
            assert_eq!(r.pending(), 0);
            assert!(r.sockets.is_empty());
        }
    }

    #[test]
    fn split_inside_the_token_value() {
        let at = String::from_utf8_lossy(CURL_V2)
            .find("FakeToken")
            .unwrap_or(0);
        assert!(at > 0);
        let out = push_all(
            &mut reassembler(),
            &[&CURL_V2[..at], &CURL_V2[at..]],
            Instant::now(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.class, Class::V2);
        assert_no_token(&out[0].1);
    }

    #[test]
    fn sockets_are_kept_apart() {
        let mut r = reassembler();
        let now = Instant::now();
        let half = CURL_V1.len() / 2;
        assert!(r.push(1, 10, &CURL_V1[..half], false, now).is_empty());
        assert!(r.push(2, 20, &CURL_V2[..half], false, now).is_empty());
        assert_eq!(r.pending(), 2);
        let a = r.push(2, 21, &CURL_V2[half..], false, now);
        let b = r.push(1, 11, &CURL_V1[half..], false, now);
        assert_eq!((a[0].0, a[0].1.class), (20, Class::V2));
        assert_eq!((b[0].0, b[0].1.class), (10, Class::V1));
    }

    #[test]
    fn two_pipelined_requests_in_one_send() {
        let mut send = CURL_V1.to_vec();
        send.extend_from_slice(CURL_V2);
        let out = reassembler().push(1, 5, &send, false, Instant::now());
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0, out[0].1.class), (5, Class::V1));
        assert_eq!((out[1].0, out[1].1.class), (5, Class::V2));
        assert_eq!(out[0].1.bytes + out[1].1.bytes, send.len());
    }

    #[test]
    fn pipelined_with_a_head_completed_and_another_started() {
        // Send 0: half of a request. Send 1: its end, a whole request, and half of a third.
        let half = CURL_V1.len() / 2;
        let mut send1 = CURL_V1[half..].to_vec();
        send1.extend_from_slice(BOTO_V2);
        send1.extend_from_slice(&CURL_V2[..half]);
        let mut r = reassembler();
        let now = Instant::now();
        let out = push_all(&mut r, &[&CURL_V1[..half], &send1, &CURL_V2[half..]], now);
        let got: Vec<_> = out.iter().map(|(c, q)| (*c, q.class)).collect();
        assert_eq!(got, [(0, Class::V1), (1, Class::V2), (1, Class::V2)]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn binary_garbage_is_malformed_with_an_escaped_snippet() {
        let garbage: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let req = one(&garbage);
        assert_eq!(req.class, Class::Malformed);
        assert!(
            req.error.as_deref().is_some_and(|e| e.contains("invalid")),
            "{req:?}"
        );
        assert_eq!(req.bytes, 1000);
        let d = req.details();
        assert!(d.starts_with("\\x00\\x01\\x02"), "{d}");
        assert!(d.len() <= 256, "{}", d.len());
        assert!(d.ends_with("..."));
        assert!(d.bytes().all(|b| (0x20..0x7f).contains(&b)), "{d}");

        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let req = one(tls);
        assert_eq!(req.class, Class::Malformed);
        assert_eq!(
            req.details(),
            "\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03"
        );
    }

    #[test]
    fn malformed_snippet_redacts_the_token() {
        // A bad header name makes httparse refuse the whole request.
        let mut bytes = b"GET / HTTP/1.1\r\nBad Header: x\r\n".to_vec();
        bytes.extend_from_slice(
            format!("X-Aws-Ec2-Metadata-Token:{TOKEN}\r\nAccept: */*\r\n\r\n").as_bytes(),
        );
        let req = one(&bytes);
        assert_eq!(req.class, Class::Malformed);
        assert_no_token(&req);
        assert_eq!(
            req.details(),
            "GET / HTTP/1.1\\x0d\\x0aBad Header: x\\x0d\\x0aX-Aws-Ec2-Metadata-Token: **token redacted**\
             \\x0d\\x0aAccept: */*\\x0d\\x0a\\x0d\\x0a"
        );
    }

    #[test]
    fn token_cut_between_two_malformed_sends_stays_redacted() {
        let first = b"\x01garbage\r\nx-aws-ec2-metadata-tok".as_slice();
        let second = format!("en: {TOKEN}\r\nmore\x02");
        let out = push_all(
            &mut reassembler(),
            &[first, second.as_bytes()],
            Instant::now(),
        );
        assert_eq!(out.len(), 2);
        for (_, req) in &out {
            assert_eq!(req.class, Class::Malformed);
            assert_no_token(req);
        }
        assert_eq!(out[1].1.details(), "**token redacted**\\x0d\\x0amore\\x02");
    }

    #[test]
    fn send_seen_from_inside_a_token_header_is_redacted() {
        let at = String::from_utf8_lossy(CURL_V2)
            .find("metadata-token")
            .unwrap_or(0);
        assert!(at > 0);
        let req = one(&CURL_V2[at..]);
        assert_eq!(req.class, Class::Malformed);
        assert_no_token(&req);
        assert_eq!(
            req.details(),
            "metadata-token: **token redacted**\\x0d\\x0a\\x0d\\x0a"
        );
        // What does not look like a token stays readable.
        let req = one(b"\x01GET /latest/meta-data/iam/security-credentials/my-eks-node-role i-0123456789abcdef0");
        assert_eq!(
            req.details(),
            "\\x01GET /latest/meta-data/iam/security-credentials/my-eks-node-role i-0123456789abcdef0"
        );
    }

    #[test]
    fn lost_send_inside_a_head_does_not_leak() {
        // The send holding "X-aws-ec2-" was lost: the rest joins the previous header.
        let text = String::from_utf8_lossy(CURL_V2);
        let (a, b) = (
            text.find("X-aws").unwrap_or(0),
            text.find("metadata-token").unwrap_or(0),
        );
        assert!(a > 0 && b > a);
        let out = push_all(
            &mut reassembler(),
            &[&CURL_V2[..a - 2], &CURL_V2[b..]],
            Instant::now(),
        );
        assert_eq!(out.len(), 1);
        assert_no_token(&out[0].1);
        assert!(
            out[0]
                .1
                .details()
                .ends_with("accept: */*metadata-token: **token redacted**,")
        );
    }

    #[test]
    fn huge_request_line_is_truncated_with_bounded_memory() {
        let max = 16 * 1024;
        let mut line = b"GET /".to_vec();
        line.resize(64 * 1024, b'a');
        let now = Instant::now();

        // In one send.
        let mut r = reassembler();
        let out = r.push(1, 0, &line, false, now);
        assert_eq!(out.len(), 1);
        let req = &out[0].1;
        assert!(req.truncated);
        assert_eq!(req.class, Class::V1);
        assert_eq!(req.method.as_deref(), Some("GET"));
        assert!(req.path.as_ref().is_some_and(|p| p.len() < max));
        assert_eq!(r.buffered_bytes(), 0);

        // In 4 KiB sends: one request, never more than the bound kept, and the request
        // after it is parsed.
        let mut r = reassembler();
        let mut out = Vec::new();
        for chunk in line.chunks(4096) {
            out.extend(r.push(1, 0, chunk, false, now));
            assert!(r.buffered_bytes() <= max);
        }
        out.extend(r.push(1, 1, b" HTTP/1.1\r\nHost: x\r\n\r\n", false, now));
        out.extend(r.push(1, 2, CURL_V2, false, now));
        let got: Vec<_> = out
            .iter()
            .map(|(c, q)| (*c, q.class, q.truncated))
            .collect();
        assert_eq!(got, [(0, Class::V1, true), (2, Class::V2, false)]);
        assert!(r.sockets.is_empty());
    }

    #[test]
    fn oversized_head_then_new_request_send() {
        // The skip after an oversized head ends at a send that starts a request.
        let mut r = Reassembler::new(64, Duration::from_secs(5));
        let now = Instant::now();
        let mut out = r.push(1, 0, &[b'a'; 10], false, now);
        out.extend(r.push(1, 1, &[b'a'; 100], false, now));
        out.extend(r.push(1, 2, CURL_V1, false, now));
        let got: Vec<_> = out
            .iter()
            .map(|(c, q)| (*c, q.class, q.truncated))
            .collect();
        assert_eq!(got, [(0, Class::Malformed, true), (2, Class::V1, false)]);
    }

    #[test]
    fn kernel_cut_snippet() {
        let now = Instant::now();
        let mut r = reassembler();
        // Cut inside the token value: still v2, redacted, and no state left.
        let cut = CURL_V2.len() - 20;
        let out = r.push(1, 0, &CURL_V2[..cut], true, now);
        assert_eq!(out.len(), 1);
        assert!(out[0].1.truncated);
        assert_eq!(out[0].1.class, Class::V2);
        assert_eq!(out[0].1.header(TOKEN_HEADER), Some(TOKEN_REDACTED));
        assert_no_token(&out[0].1);
        assert_eq!(r.pending(), 0);
        // Cut in the request line of a token PUT.
        let out = r.push(2, 0, b"PUT /latest/api/token HT", true, now);
        assert_eq!((out[0].1.class, out[0].1.truncated), (Class::V2Token, true));
        // Complete requests before the cut are whole.
        let mut send = CURL_V1.to_vec();
        send.extend_from_slice(&CURL_V1[..30]);
        let out = r.push(3, 0, &send, true, now);
        let got: Vec<_> = out.iter().map(|(_, q)| (q.class, q.truncated)).collect();
        assert_eq!(got, [(Class::V1, false), (Class::V1, true)]);
        // Cut in the body: the next send is a new request, not body.
        let out = r.push(
            4,
            0,
            b"PUT /x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
            true,
            now,
        );
        assert_eq!(out.len(), 1);
        let out = r.push(4, 1, CURL_V1, false, now);
        assert_eq!((out.len(), out[0].1.class), (1, Class::V1));
        assert!(r.sockets.is_empty());
    }

    #[test]
    fn expire_emits_stale_heads() {
        let mut r = Reassembler::new(16 * 1024, Duration::from_secs(5));
        let t0 = Instant::now();
        let cut = CURL_V2.len() - 20;
        assert!(r.push(1, 10, &CURL_V2[..cut], false, t0).is_empty());
        assert!(
            r.push(2, 20, b"\x01\x02", false, t0 + Duration::from_secs(3))
                .len()
                == 1
        );
        assert!(
            r.push(3, 30, b"GE", false, t0 + Duration::from_secs(3))
                .is_empty()
        );
        assert_eq!(r.pending(), 2);
        assert!(r.expire(t0 + Duration::from_secs(4)).is_empty());
        let out = r.expire(t0 + Duration::from_secs(5));
        assert_eq!(out.len(), 1);
        let (ctx, req) = &out[0];
        assert_eq!(*ctx, 10);
        assert!(req.truncated);
        assert_eq!(req.class, Class::V2);
        assert_no_token(req);
        let out = r.expire(t0 + Duration::from_secs(8));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.class), (30, Class::Malformed));
        assert_eq!(out[0].1.details(), "GE");
        assert_eq!(r.pending(), 0);
        assert!(r.sockets.is_empty());
    }

    #[test]
    fn drain_at_shutdown() {
        let mut r = reassembler();
        let now = Instant::now();
        r.push(1, 1, &CURL_V1[..20], false, now);
        r.push(2, 2, &fixture!("curl-v2-token-put.http")[..30], false, now);
        let mut out = r.drain();
        out.sort_by_key(|(c, _)| *c);
        let got: Vec<_> = out
            .iter()
            .map(|(c, q)| (*c, q.class, q.truncated))
            .collect();
        assert_eq!(got, [(1, Class::V1, true), (2, Class::V2Token, true)]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn socket_count_is_bounded() {
        let mut r = reassembler();
        r.max_sockets = 8;
        let t0 = Instant::now();
        let mut evicted = Vec::new();
        for key in 0..20u64 {
            let at = t0 + Duration::from_millis(key);
            evicted.extend(r.push(key, key as u32, &CURL_V1[..10], false, at));
            assert!(r.sockets.len() <= 8);
        }
        // The oldest went first.
        let ctxs: Vec<_> = evicted.iter().map(|(c, _)| *c).collect();
        assert_eq!(ctxs, (0..12).collect::<Vec<u32>>());
        assert!(
            evicted
                .iter()
                .all(|(_, q)| q.truncated && q.class == Class::V1)
        );
    }

    #[test]
    fn body_with_content_length_is_not_a_request() {
        let body = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = format!(
            "PUT /latest/api/token HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let now = Instant::now();

        // Body in the same send as the head, then the next request.
        let mut send = head.as_bytes().to_vec();
        send.extend_from_slice(body);
        send.extend_from_slice(CURL_V2);
        let out = reassembler().push(1, 0, &send, false, now);
        let got: Vec<_> = out.iter().map(|(_, q)| q.class).collect();
        assert_eq!(got, [Class::V2Token, Class::V2]);
        assert_eq!(out[0].1.bytes, head.len() + body.len());

        // Body in later sends, split.
        let mut r = reassembler();
        let out = push_all(
            &mut r,
            &[head.as_bytes(), &body[..10], &body[10..], CURL_V1],
            now,
        );
        let got: Vec<_> = out.iter().map(|(c, q)| (*c, q.class)).collect();
        assert_eq!(got, [(0, Class::V2Token), (3, Class::V1)]);
        assert!(r.sockets.is_empty());
    }

    /// Issue 16's attack round: chunk data holding a blank line and a head whose
    /// `Content-Length` covers the rest of the body and the v1 request after it. Passed over
    /// by its framing, the body hides nothing: the v1 request is seen, in one send or split.
    #[test]
    fn chunk_data_cannot_hide_the_next_request() {
        let smuggled = b"\r\n\r\nPUT /latest/api/token HTTP/1.1\r\nContent-Length: 200\r\n\r\n";
        let mut send = b"GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\
            Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        send.extend_from_slice(format!("{:x};ext=1\r\n", smuggled.len()).as_bytes());
        send.extend_from_slice(smuggled);
        send.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n");
        send.extend_from_slice(CURL_V1);
        for cut in [send.len(), 120, 140, send.len() - CURL_V1.len() - 1] {
            let mut r = reassembler();
            let out = push_all(&mut r, &[&send[..cut], &send[cut..]], Instant::now());
            let got: Vec<_> = out.iter().map(|(_, q)| q.class).collect();
            assert_eq!(got, [Class::V2, Class::V1], "cut at {cut}: {out:?}");
            assert!(r.sockets.is_empty(), "cut at {cut}");
        }
    }

    /// A body that says chunked but is not: up to the next blank line, as before.
    #[test]
    fn broken_chunked_framing_falls_back_to_the_blank_line() {
        let send = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nnot hex\r\n\r\n";
        let mut r = reassembler();
        let out = push_all(&mut r, &[send.as_slice(), CURL_V1], Instant::now());
        let got: Vec<_> = out.iter().map(|(c, q)| (*c, q.class)).collect();
        assert_eq!(got, [(0, Class::V1), (1, Class::V1)]);
    }

    #[test]
    fn chunked_body_is_skipped() {
        let send = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let mut r = reassembler();
        let out = push_all(&mut r, &[send.as_slice(), CURL_V1], Instant::now());
        let got: Vec<_> = out.iter().map(|(c, q)| (*c, q.class)).collect();
        assert_eq!(got, [(0, Class::V1), (1, Class::V1)]);
    }

    #[test]
    fn too_many_headers() {
        let mut bytes = b"GET /latest/meta-data/ HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            bytes.extend_from_slice(format!("X-Filler-{i}: {i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(format!("X-aws-ec2-metadata-token: {TOKEN}\r\n\r\n").as_bytes());
        let req = one(&bytes);
        assert_eq!(req.class, Class::V2);
        assert_eq!(req.headers.len(), 101);
        assert_no_token(&req);
    }

    #[test]
    fn blank_lines_between_requests() {
        let mut send = b"\r\n".to_vec();
        send.extend_from_slice(CURL_V1);
        send.extend_from_slice(b"\r\n");
        let mut r = reassembler();
        let out = r.push(1, 0, &send, false, Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.class, Class::V1);
        assert!(r.sockets.is_empty());
    }

    #[test]
    fn truncated_after_blank_lines() {
        let out = reassembler().push(1, 0, b"\r\nPUT /latest/api/to", true, Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.class, Class::V2Token);
        assert_eq!(out[0].1.details(), "put /latest/api/to,");
        let out = reassembler().push(1, 0, b"\r\n\x00\x01", true, Instant::now());
        assert_eq!(out[0].1.class, Class::Malformed);
    }

    /// A small deterministic PRNG (xorshift64), so these tests need no crate.
    fn rng(seed: u64) -> impl FnMut(usize) -> usize {
        let mut x = seed.max(1);
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn all_fixtures_pipelined_in_random_sends() {
        let stream: Vec<u8> = FIXTURES
            .iter()
            .flat_map(|(_, b, _)| b.iter().copied())
            .collect();
        let want: Vec<Class> = FIXTURES.iter().map(|(_, _, c)| *c).collect();
        for seed in 1..200 {
            let mut next = rng(seed);
            let mut r = reassembler();
            let now = Instant::now();
            let mut out = Vec::new();
            let mut off = 0;
            while off < stream.len() {
                let n = 1 + next(300);
                let end = (off + n).min(stream.len());
                out.extend(r.push(1, off as u32, &stream[off..end], false, now));
                off = end;
            }
            let got: Vec<Class> = out.iter().map(|(_, q)| q.class).collect();
            assert_eq!(got, want, "seed {seed}");
            for (_, q) in &out {
                assert!(!q.truncated);
                assert_no_token(q);
            }
            assert!(r.sockets.is_empty());
        }
    }

    #[test]
    fn random_cuts_and_garbage_never_leak_or_panic() {
        let stream: Vec<u8> = FIXTURES
            .iter()
            .flat_map(|(_, b, _)| b.iter().copied())
            .collect();
        let mut next = rng(42);
        let mut r = Reassembler::new(256, Duration::from_secs(1));
        let t0 = Instant::now();
        let mut out = Vec::new();
        for i in 0..5000u64 {
            let at = next(stream.len());
            let len = next(400);
            let mut send = stream[at..(at + len).min(stream.len())].to_vec();
            if next(4) == 0 && !send.is_empty() {
                // Flip a byte.
                let j = next(send.len());
                send[j] = next(256) as u8;
            }
            let now = t0 + Duration::from_millis(i * 10);
            out.extend(r.push(next(8) as u64, 0, &send, next(5) == 0, now));
            out.extend(r.expire(now));
        }
        out.extend(r.drain());
        assert!(out.len() > 1000);
        for (_, q) in &out {
            assert!(q.details().len() <= 2 * 1024, "{}", q.details().len());
            if q.class == Class::Malformed {
                assert!(q.details().len() <= 256);
            }
            assert_no_token(q);
        }
    }

    /// Found by the http_reassembly fuzz target: a lost send joined the start of
    /// `Accept-Encoding` onto the token header, and the send was cut inside the token before
    /// its first digit, so the token-shape test alone let 17 characters of it through.
    #[test]
    fn token_header_joined_to_another_header_is_redacted() {
        let cut = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n\
                   Accept-EnX-aws-ec2-metadata-token: AQAEAInjectedFuzz";
        let out = reassembler().push(1, 0, cut.as_bytes(), true, Instant::now());
        let [(_, req)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(
            !req.details().contains("aqaeainjectedfuzz"),
            "{}",
            req.details()
        );
        assert!(!format!("{req:?}").contains("AQAEAInjectedFuzz"), "{req:?}");

        // The same join inside another header's value.
        let joined =
            "GET / HTTP/1.1\r\nHost: abX-aws-ec2-metadata-token: AQAEAInjectedFuzz\r\n\r\n";
        let req = one(joined.as_bytes());
        assert_eq!(
            req.header("host"),
            Some("abX-aws-ec2-metadata-token: **token redacted**")
        );
        assert!(!format!("{req:?}").contains("AQAEAInjectedFuzz"), "{req:?}");
    }

    #[test]
    fn details_escape_control_characters() {
        let req = one(b"GET / HTTP/1.1\r\nX-Odd: a\xc2\x85b\r\n\r\n");
        assert_eq!(req.details(), "get / http/1.1, x-odd: a\\u{85}b,");
    }
}
