//! One IMDS request as we log it: the request model ([`Request`], [`Class`]), its
//! IMDSv1/IMDSv2 classification and its "req details" text. Bytes become requests in
//! `parse` (httparse, best effort on cut heads) and `reassembly` (per-socket state across
//! sends); token values are redacted (`redact`) while a `Request` is built, before anything
//! else sees it.
//!
//! The kernel side hands us, for every send on a socket to IMDS, a copy of (the start of) the
//! payload. A request's headers may arrive in several sends, several pipelined requests may
//! arrive in one, and a request body follows its headers. [`Reassembler`] turns that stream of
//! snippets into one [`Request`] per HTTP request, and never keeps or returns a token value.
// Bytes from the wire: no str slice that could panic on a multi-byte character (here and
// in `parse` and `reassembly`), and no byte slice or index either in `parse` and
// `reassembly` (`clippy::indexing_slicing` in each).
#![warn(clippy::string_slice)]

mod parse;
mod reassembly;

use std::fmt::Write as _;

use imds_snoop_line::label;

pub use self::reassembly::Reassembler;
pub(crate) use crate::redact::TOKEN_REDACTED;
use crate::{escape::find_byte, redact::is_token_header};

/// The IMDSv2 token endpoint (`PUT`).
const TOKEN_PATH: &str = "/latest/api/token";

/// What a request is, as far as the IMDS session protocol goes: a row of the line
/// contract's class table. `classify` yields `V1` (no session token: refused where
/// `http_tokens=required`), `V2` (carries `X-aws-ec2-metadata-token`), `V2Token`
/// (`PUT /latest/api/token`, the start of an IMDSv2 session) or `Malformed` (not HTTP, or
/// HTTP that httparse refuses: still logged, never dropped); `V2TokenNoResponse` is a
/// record's class once its outcome is known (`record::Record::class`), never a request's.
pub use imds_snoop_line::Class;

/// One request sent to IMDS, as parsed; token values already redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub class: Class,
    /// As sent, e.g. `GET`.
    pub method: Option<String>,
    pub path: Option<String>,
    /// httparse's minor version: 1 for HTTP/1.1.
    pub version: Option<u8>,
    /// Names and values as sent; the token header's value is `**token redacted**` (and so is any
    /// token-like run in other values, see `redact::redact_token_like`).
    pub headers: Vec<(String, String)>,
    /// The header block did not end in the bytes we had.
    pub truncated: bool,
    /// Why the request is malformed (httparse's error, not HTTP, ...).
    pub error: Option<String>,
    /// Bytes of this request consumed (headers + body).
    pub bytes: usize,
    /// For a malformed request: the start of its raw bytes, escaped (printable ASCII kept,
    /// others as `\xNN`), bounded to 256 chars, any token value redacted.
    pub snippet: Option<String>,
}

impl Request {
    /// The anchor tool's "req details:" text: request line and headers lowercased, joined
    /// ", ", with a trailing ",", the token header as the bare item `**token redacted**`.
    /// For a malformed request, the escaped and redacted snippet of its raw bytes.
    pub fn details(&self) -> String {
        let mut out = String::new();
        self.details_into(&mut out);
        out
    }

    /// Appends [`Self::details`] to `out`, with no allocation of its own. Lowercasing and
    /// escaping go char by char (`clean` of a concatenation is the concatenation of each
    /// part's `clean`), so each part is cleaned where it lands.
    pub(crate) fn details_into(&self, out: &mut String) {
        if self.class == Class::Malformed {
            out.push_str(self.snippet.as_deref().unwrap_or_default());
            return;
        }
        let mut request_line_empty = true;
        for part in [self.method.as_deref(), self.path.as_deref()]
            .into_iter()
            .flatten()
        {
            if !request_line_empty {
                out.push(' ');
            }
            request_line_empty &= part.is_empty();
            clean_into(out, part);
        }
        if let Some(minor) = self.version {
            out.push_str(" http/1.");
            push_u8(out, minor);
        }
        for (name, value) in &self.headers {
            out.push_str(label::HEADER_SEPARATOR);
            if is_token_header(name) {
                out.push_str(TOKEN_REDACTED);
            } else {
                clean_into(out, name);
                out.push_str(": ");
                clean_into(out, value);
            }
        }
        out.push(',');
    }

    /// A send whose payload the kernel could not read: still a call to IMDS, logged as
    /// malformed (nothing to classify it by).
    pub(crate) fn unreadable() -> Self {
        Self::malformed_call("payload unreadable".to_string(), false, 0, None)
    }

    /// A call that could not be parsed (`Class::Malformed`): the error, whether the payload
    /// was cut, its length in bytes and a redacted snippet of it, if any.
    pub(crate) fn malformed_call(
        error: String,
        truncated: bool,
        bytes: usize,
        snippet: Option<String>,
    ) -> Self {
        Request {
            class: Class::Malformed,
            method: None,
            path: None,
            version: None,
            headers: Vec::new(),
            truncated,
            error: Some(error),
            bytes,
            snippet,
        }
    }

    /// The first value of header `name` (case-insensitive).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for tests; the daemon does not look headers up (yet)"
        )
    )]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Appends `s` lowercased (as the anchor does) with control characters escaped as
/// `\u{NN}`, so that no header value can break a log line or a terminal. Runs of plain
/// ASCII (all a request usually holds) are copied whole and lowercased in place.
fn clean_into(out: &mut String, s: &str) {
    let mut rest = s;
    while !rest.is_empty() {
        let plain = find_byte(rest.as_bytes(), |b| {
            !(b == b'\t' || (0x20..0x7f).contains(&b))
        })
        .unwrap_or(rest.len());
        // `plain` is at a non-ASCII or control byte's start: a char boundary.
        let (head, tail) = rest.split_at_checked(plain).unwrap_or((rest, ""));
        let start = out.len();
        out.push_str(head);
        if let Some(pushed) = out.get_mut(start..) {
            pushed.make_ascii_lowercase();
        }
        let mut chars = tail.chars();
        let Some(c) = chars.next() else { break };
        for c in c.to_lowercase() {
            if c.is_control() && c != '\t' {
                // The rare path: a control character in a request.
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            } else {
                out.push(c);
            }
        }
        rest = chars.as_str();
    }
}

/// A small number in decimal, without going through `fmt`.
fn push_u8(out: &mut String, n: u8) {
    if n >= 100 {
        out.push((b'0' + n / 100) as char);
    }
    if n >= 10 {
        out.push((b'0' + n / 10 % 10) as char);
    }
    out.push((b'0' + n % 10) as char);
}

/// `PUT /latest/api/token`, with or without a query, in origin or absolute form.
fn is_token_put(method: Option<&str>, path: Option<&str>) -> bool {
    let (Some("PUT"), Some(mut path)) = (method, path) else {
        return false;
    };
    if let Some(rest) = path.strip_prefix("http://") {
        path = rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/");
    }
    path.split(['?', '#']).next() == Some(TOKEN_PATH)
}

fn classify(method: Option<&str>, path: Option<&str>, headers: &[(String, String)]) -> Class {
    if is_token_put(method, path) {
        Class::V2Token
    } else if headers.iter().any(|(n, _)| is_token_header(n)) {
        Class::V2
    } else if method.is_some() {
        Class::V1
    } else {
        Class::Malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::tests::awkward_strings;

    #[test]
    fn unreadable_payload() {
        let req = Request::unreadable();
        assert_eq!(req.class, Class::Malformed);
        assert_eq!(req.details(), "");
        assert!(req.error.is_some());
    }

    /// `clean` as it was before the fast path (one String per part, char by char): the
    /// reference that `clean_into` must match byte for byte.
    fn clean_reference(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars().flat_map(char::to_lowercase) {
            if c.is_control() && c != '\t' {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn clean_into_matches_the_char_by_char_reference() {
        for s in awkward_strings() {
            let mut out = String::from("kept ");
            clean_into(&mut out, &s);
            assert_eq!(out, format!("kept {}", clean_reference(&s)), "{s:?}");
        }
    }

    #[test]
    fn details_match_the_joined_reference() {
        let strings = awkward_strings();
        for (i, pair) in strings.chunks(3).enumerate() {
            let [method, path, value] = pair else {
                continue;
            };
            let req = Request {
                class: Class::V1,
                method: (i % 5 != 0).then(|| method.clone()),
                path: (i % 7 != 0).then(|| path.clone()),
                version: (i % 3 != 0).then_some((i % 2) as u8),
                headers: vec![
                    (method.clone(), value.clone()),
                    ("X-aws-ec2-metadata-token".into(), TOKEN_REDACTED.into()),
                    (value.clone(), path.clone()),
                ],
                truncated: false,
                error: None,
                bytes: 0,
                snippet: None,
            };
            // The details as they were built before details_into.
            let mut line = String::new();
            for part in [req.method.as_deref(), req.path.as_deref()]
                .into_iter()
                .flatten()
            {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(part);
            }
            if let Some(minor) = req.version {
                line.push_str(&format!(" http/1.{minor}"));
            }
            let mut items = vec![clean_reference(&line)];
            for (name, value) in &req.headers {
                if is_token_header(name) {
                    items.push(TOKEN_REDACTED.to_string());
                } else {
                    items.push(clean_reference(&format!("{name}: {value}")));
                }
            }
            assert_eq!(req.details(), items.join(", ") + ",", "{req:?}");
        }
    }
}
