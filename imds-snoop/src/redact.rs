//! Token redaction: every token value seen on the wire or in a caller's argv is replaced
//! with [`TOKEN_REDACTED`] before anything else keeps it. One scanner serves request bytes
//! (`http`) and argv (`process`), so the attribution layer need not reach into the HTTP
//! parser. The ground floor: this module depends on nothing else in the crate.
// Bytes from the wire: no str slice that could panic on a multi-byte character. Byte
// slices and indexes here follow a search over the same bytes (`clippy::indexing_slicing`
// is not on yet: about 20 sites to move to `get`).
#![warn(clippy::string_slice)]

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, Instant},
};

/// The IMDSv2 session token header (compared case-insensitively).
pub(crate) const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// What stands in for a token value, in headers and in `details()`: the anchor tool's marker.
pub(crate) const TOKEN_REDACTED: &str = "**token redacted**";
/// Shortest run of base64 characters taken for a token outside the token header (see
/// [`redact_token_like`]); IMDS tokens are 56 characters.
const TOKEN_LIKE_MIN: usize = 16;

/// Whether `name` is the token header (compared case-insensitively).
pub(crate) fn is_token_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TOKEN_HEADER)
}

/// The token header's name, alone or at the end of a longer name (compared as bytes: a
/// name may hold multi-byte characters where a str slice would not be on a boundary).
pub(crate) fn ends_with_token_header(name: &str) -> bool {
    let (name, token) = (name.as_bytes(), TOKEN_HEADER.as_bytes());
    name.len() >= token.len() && name[name.len() - token.len()..].eq_ignore_ascii_case(token)
}

/// Where a token header's value ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueEnd {
    /// At the end of the line: a request's header.
    Line,
    /// At the end of the shell word: a caller's argv, where `-H "X-aws-ec2-metadata-token:
    /// $T"` arrives as one word among others on the joined line.
    Word,
}

/// Replaces every token value (after a case-insensitive `x-aws-ec2-metadata-token` and its
/// colon) with the redaction marker: the one scanner for request bytes and argv alike.
pub(crate) fn redact_token_values(data: &[u8], end: ValueEnd) -> Cow<'_, [u8]> {
    redact_from(data, 0, None, end)
}

/// [`redact_token_values`] for a request, whose first line may be the tail of a token (a
/// send seen from its middle): then that line goes too.
pub(crate) fn redact_raw(data: &[u8], redact_first_line: bool) -> Cow<'_, [u8]> {
    if redact_first_line {
        let end = line_end(data, 0);
        redact_from(
            data,
            end,
            Some(TOKEN_REDACTED.as_bytes().to_vec()),
            ValueEnd::Line,
        )
    } else {
        redact_from(data, 0, None, ValueEnd::Line)
    }
}

/// The scan: `data[..start]` is already in `out` (when `out` is `Some`).
fn redact_from(
    data: &[u8],
    start: usize,
    mut out: Option<Vec<u8>>,
    value_end: ValueEnd,
) -> Cow<'_, [u8]> {
    let mut copied = start; // data[..copied] is already in `out`
    let mut i = start;
    let name = TOKEN_HEADER.as_bytes();
    while i + name.len() <= data.len() {
        if !data[i..i + name.len()].eq_ignore_ascii_case(name) {
            i += 1;
            continue;
        }
        let mut j = i + name.len();
        while data.get(j).is_some_and(|&b| b == b' ' || b == b'\t') {
            j += 1;
        }
        if data.get(j) != Some(&b':') {
            i += 1;
            continue;
        }
        let end = match value_end {
            ValueEnd::Line => line_end(data, j + 1),
            ValueEnd::Word => word_end(data, j + 1),
        };
        let buf = out.get_or_insert_with(Vec::new);
        buf.extend_from_slice(&data[copied..=j]);
        buf.push(b' ');
        buf.extend_from_slice(TOKEN_REDACTED.as_bytes());
        copied = end;
        i = end;
    }
    splice_rest(out, data, copied)
}

/// Defence in depth: a send seen from its middle (lost events, a tracer started
/// mid-connection) can start inside a token header, past its name. Any long run of base64
/// characters mixing upper case, lower case and digits is taken for a token (paths, user
/// agents and instance ids do not look like that).
pub(crate) fn redact_token_like(data: &[u8]) -> Cow<'_, [u8]> {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // data[..copied] is already in `out`
    let mut i = 0;
    while i < data.len() {
        if !is_b64(data[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < data.len() && is_b64(data[i]) {
            i += 1;
        }
        let run = &data[start..i];
        if run.len() >= TOKEN_LIKE_MIN
            && run.iter().any(u8::is_ascii_uppercase)
            && run.iter().any(u8::is_ascii_lowercase)
            && run.iter().any(u8::is_ascii_digit)
        {
            let buf = out.get_or_insert_with(Vec::new);
            buf.extend_from_slice(&data[copied..start]);
            buf.extend_from_slice(TOKEN_REDACTED.as_bytes());
            copied = i;
        }
    }
    splice_rest(out, data, copied)
}

/// The end of a redaction pass: `data` untouched when nothing was replaced, else what was
/// built so far plus the rest of `data` from `copied`.
fn splice_rest(out: Option<Vec<u8>>, data: &[u8], copied: usize) -> Cow<'_, [u8]> {
    match out {
        None => Cow::Borrowed(data),
        Some(mut buf) => {
            buf.extend_from_slice(&data[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// The end of the shell word a token value is in (leading blanks skipped).
fn word_end(data: &[u8], from: usize) -> usize {
    let start = from
        + data[from..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    data[start..]
        .iter()
        .position(|&b| matches!(b, b' ' | b'"' | b'\'' | b'\t'))
        .map_or(data.len(), |p| start + p)
}

fn line_end(data: &[u8], from: usize) -> usize {
    data[from..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(data.len(), |p| from + p)
}

/// A token can sit in a caller's argv (`curl -H "X-aws-ec2-metadata-token: AQAE..."`):
/// replace whatever follows the header name, up to the next blank or quote, so the token
/// never reaches the log through the process tree either.
pub(crate) fn redact_tokens(argv: &str) -> String {
    // The scanner splices only at ASCII bytes, so valid UTF-8 stays valid.
    String::from_utf8_lossy(&redact_token_values(argv.as_bytes(), ValueEnd::Word)).into_owned()
}

/// Longest a token can be valid: IMDS's maximum `X-aws-ec2-metadata-token-ttl-seconds`.
pub(crate) const TOKEN_MAX_TTL: Duration = Duration::from_secs(21_600);
/// Tokens remembered at most (IMDS hands out few: one per SDK session, for hours).
const MAX_TOKENS: usize = 4096;
/// Sockets whose unfinished last line is kept, to see a token header split across sends.
const MAX_TAILS: usize = 4096;
/// Longest unfinished line kept per socket: a token header line is about 82 bytes.
const MAX_TAIL: usize = 256;
/// Shortest value remembered as a token (IMDS tokens are 56 characters): a short value
/// would let a caller blank out common words in everyone's lines.
const TOKEN_MIN: usize = 20;
/// What is remembered of a token, and looked for in other text: its first bytes.
const KEY: usize = TOKEN_MIN;

/// Characters of a token (IMDS tokens are standard base64).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// Every token value seen in a request's token header, remembered for as long as it can be
/// valid ([`TOKEN_MAX_TTL`]) in bounded memory, so it is redacted wherever else it turns up:
/// a caller's or an ancestor's argv (`python3 fetch.py <token>`, `--token <token>`), a
/// path, a user agent, whatever precedes it. Only the first [`KEY`] bytes are kept (not the
/// token): a run of token characters holding them is redacted whole, which also covers a
/// token whose end the capture cut.
pub(crate) struct SeenTokens {
    keys: HashMap<[u8; KEY], Instant>,
    /// Per socket: the last line of the previous send when it had not ended.
    tails: HashMap<u64, Vec<u8>>,
}

impl Default for SeenTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl SeenTokens {
    pub(crate) fn new() -> Self {
        Self {
            keys: HashMap::new(),
            tails: HashMap::new(),
        }
    }

    /// A send's payload on socket `sock`: remembers the token values in it (a header split
    /// across sends is joined with the previous send's unfinished line).
    pub(crate) fn observe(&mut self, sock: u64, payload: &[u8], now: Instant) {
        let tail = self.tails.remove(&sock);
        let joined;
        let data: &[u8] = match &tail {
            Some(t) => {
                joined = [t.as_slice(), payload].concat();
                &joined
            }
            None => payload,
        };
        let name = TOKEN_HEADER.as_bytes();
        let mut i = 0;
        // Candidates start with an `x` or `X` (one cheap test per byte), then the name.
        let at_name = |rest: &[u8]| {
            rest.iter()
                .enumerate()
                .filter(|(_, b)| **b | 0x20 == b'x')
                .map(|(p, _)| p)
                .find(|&p| {
                    rest.get(p..p + name.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(name))
                })
        };
        while let Some(at) = data.get(i..).and_then(at_name) {
            let mut j = i + at + name.len();
            while data.get(j).is_some_and(|&b| b == b' ' || b == b'\t') {
                j += 1;
            }
            i = j;
            if data.get(j) != Some(&b':') {
                continue;
            }
            let end = line_end(data, j + 1);
            let value = data.get(j + 1..end).unwrap_or_default();
            let value = value.trim_ascii();
            // A value cut by the end of this send is remembered too (the capture may have
            // cut it for good); its rest, if it comes, completes the line next time.
            self.remember(value, now);
            i = end;
        }
        // Keep the unfinished last line, if short, for the next send on this socket.
        let last = data.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if let Some(rest) = data.get(last..)
            && !rest.is_empty()
            && rest.len() <= MAX_TAIL
        {
            if self.tails.len() >= MAX_TAILS {
                self.tails.clear();
            }
            self.tails.insert(sock, rest.to_vec());
        }
    }

    fn remember(&mut self, value: &[u8], now: Instant) {
        if value.len() < TOKEN_MIN || !value.iter().all(|&b| is_token_char(b)) {
            return;
        }
        let Some(key) = value.first_chunk::<KEY>() else {
            return;
        };
        if self.keys.len() >= MAX_TOKENS && !self.keys.contains_key(key) {
            self.sweep(now);
            if self.keys.len() >= MAX_TOKENS
                && let Some(oldest) = self.keys.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
            {
                self.keys.remove(&oldest);
            }
        }
        self.keys.insert(*key, now);
    }

    /// Forgets tokens older than [`TOKEN_MAX_TTL`] (none can be valid any more).
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.keys
            .retain(|_, seen| now.duration_since(*seen) < TOKEN_MAX_TTL);
    }

    /// Whether any token is remembered (then [`Self::redact`] has work to do).
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `text` with every run of token characters that holds a remembered token replaced by
    /// [`TOKEN_REDACTED`]. Runs are cut only at ASCII bytes, so UTF-8 stays UTF-8.
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.keys.is_empty() {
            return Cow::Borrowed(text);
        }
        let data = text.as_bytes();
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut i = 0;
        while i < data.len() {
            if !data.get(i).copied().is_some_and(is_token_char) {
                i += 1;
                continue;
            }
            let start = i;
            while data.get(i).copied().is_some_and(is_token_char) {
                i += 1;
            }
            let run = data.get(start..i).unwrap_or_default();
            if run.len() >= KEY
                && run.windows(KEY).any(|w| {
                    w.first_chunk::<KEY>()
                        .is_some_and(|k| self.keys.contains_key(k))
                })
            {
                let buf = out.get_or_insert_with(Vec::new);
                buf.extend_from_slice(data.get(copied..start).unwrap_or_default());
                buf.extend_from_slice(TOKEN_REDACTED.as_bytes());
                copied = i;
            }
        }
        match splice_rest(out, data, copied) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_argv_are_redacted() {
        let argv = "curl -H X-aws-ec2-metadata-token: AQAEAbc123== http://169.254.169.254/ -H x-AWS-ec2-metadata-token:Zz9 -s";
        let r = redact_tokens(argv);
        assert!(!r.contains("AQAEAbc123") && !r.contains("Zz9"), "{r}");
        assert_eq!(
            r,
            "curl -H X-aws-ec2-metadata-token: **token redacted** http://169.254.169.254/ -H x-AWS-ec2-metadata-token: **token redacted** -s"
        );
        assert_eq!(redact_tokens("curl http://x/"), "curl http://x/");
        // The ttl header is not a token.
        let ttl = "curl -H X-aws-ec2-metadata-token-ttl-seconds: 21600";
        assert_eq!(redact_tokens(ttl), ttl);
    }
}

#[cfg(test)]
mod seen_tests {
    use super::*;

    const TOKEN: &str = "AQAEAFakeTokenValueImdsSnoop0123456789abcdefghijklmnopq==";

    #[test]
    fn a_token_seen_in_a_header_is_redacted_anywhere() {
        let mut seen = SeenTokens::new();
        let t0 = Instant::now();
        assert_eq!(
            seen.redact(&format!("python3 fetch.py {TOKEN}")),
            format!("python3 fetch.py {TOKEN}")
        );
        seen.observe(
            1,
            format!("GET / HTTP/1.1\r\nX-aws-ec2-metadata-token: {TOKEN}\r\n\r\n").as_bytes(),
            t0,
        );
        for (text, want) in [
            (
                format!("python3 fetch.py {TOKEN}"),
                "python3 fetch.py **token redacted**".to_owned(),
            ),
            (
                format!("app --token={TOKEN} -v"),
                "app --**token redacted** -v".to_owned(),
            ),
            (
                format!("x\"{TOKEN}\"é"),
                "x\"**token redacted**\"é".to_owned(),
            ),
            ("nothing here".to_owned(), "nothing here".to_owned()),
        ] {
            assert_eq!(seen.redact(&text), want);
        }
        // Until it cannot be valid any more.
        seen.sweep(t0 + TOKEN_MAX_TTL);
        assert!(seen.is_empty());
    }

    #[test]
    fn split_headers_short_values_and_bounds() {
        let mut seen = SeenTokens::new();
        let now = Instant::now();
        let head = "GET / HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-to";
        seen.observe(7, head.as_bytes(), now);
        seen.observe(7, format!("ken: {TOKEN}\r\n\r\n").as_bytes(), now);
        assert_eq!(seen.redact(TOKEN), TOKEN_REDACTED);
        // Short values and odd characters are not taken for tokens.
        let mut other = SeenTokens::new();
        other.observe(1, b"X-aws-ec2-metadata-token: curl\r\n", now);
        other.observe(
            1,
            "X-aws-ec2-metadata-token: aaaaaaaaaaaaaaaaaaaaaaaé\r\n".as_bytes(),
            now,
        );
        assert!(other.is_empty());
        // Bounded: the oldest goes.
        for n in 0..MAX_TOKENS + 10 {
            let v = format!("{n:0>8}TokenTokenTokenToken");
            other.observe(
                2,
                format!("x-aws-ec2-metadata-token:{v}\n").as_bytes(),
                now + Duration::from_millis(n as u64),
            );
        }
        assert_eq!(other.keys.len(), MAX_TOKENS);
        assert!(other.tails.len() <= MAX_TAILS);
    }
}
