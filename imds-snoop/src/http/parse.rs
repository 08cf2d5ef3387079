//! Bytes to [`Request`]s: one complete head (httparse), a head cut short (best effort: the
//! complete lines, a request line or header started on the last one), and the escaped,
//! redacted snippet of bytes that are no request.
//!
//! Wire bytes: no slice or index here can panic (the room's `string_slice`, and
//! `indexing_slicing` in this file).
#![warn(clippy::indexing_slicing)]

use super::{Class, Request, TOKEN_PATH, classify};
use crate::redact::{
    TOKEN_REDACTED, ends_with_token_header, is_token_header, redact_raw, redact_token_like,
};

/// httparse's header array on the stack; a request with more headers is parsed again with a
/// heap array sized from its line count (see [`parse_head`]).
const MAX_HEADERS: usize = 64;
/// Bound on a malformed request's escaped snippet in `details()`, in chars.
const SNIPPET_CHARS: usize = 256;

/// A header as we keep it: the token's value never leaves this function. If a send of a
/// head was lost (ring buffer full), its neighbours join: the token header can then end
/// another header's name (`Accept-EnX-aws-ec2-metadata-token`) or sit inside another
/// header's value (`Host: abX-aws-ec2-metadata-token: ...`). Both are redacted by name, and
/// any other value keeps only runs that do not look like a token (the shape test alone
/// misses a token cut before its first digit: found by the http_reassembly fuzz target).
fn header_pair(name: &str, value: &[u8]) -> (String, String) {
    let value = if ends_with_token_header(name) {
        TOKEN_REDACTED.to_string()
    } else {
        let by_name = redact_raw(value, false);
        String::from_utf8_lossy(&redact_token_like(&by_name)).into_owned()
    };
    (name.to_string(), value)
}

pub(super) fn malformed(
    data: &[u8],
    error: String,
    truncated: bool,
    redact_first_line: bool,
) -> Request {
    Request::malformed_call(
        error,
        truncated,
        data.len(),
        Some(snippet(data, redact_first_line)),
    )
}

/// What follows a request's headers on the connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Body {
    None,
    Length(usize),
    /// Length unknown until the last chunk: skipped up to the end of the chunked body.
    Chunked,
}

/// Parses one request head at the start of `data`: `Ok(None)` while the header block has not
/// ended. On success, `Request::bytes` is the length of the head alone.
pub(super) fn parse_head(data: &[u8]) -> Result<Option<(Request, Body)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_with(data, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            // A head cannot have more headers than lines, so this array is always big enough;
            // its size is bounded by the request bytes we keep.
            let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
            let mut headers = vec![httparse::EMPTY_HEADER; lines];
            parse_with(data, &mut headers)
        }
        other => other,
    }
}

fn parse_with<'b>(
    data: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<(Request, Body)>, httparse::Error> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(data)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut body = Body::None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
        {
            body = Body::Chunked;
        } else if h.name.eq_ignore_ascii_case("content-length") && body == Body::None {
            // An unreadable length is taken as none: the bytes after the head are then parsed
            // as a request, and show up as malformed if they are not one.
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len.filter(|&l| l > 0) {
                body = Body::Length(len);
            }
        }
    }
    let headers: Vec<_> = req
        .headers
        .iter()
        .map(|h| header_pair(h.name, h.value))
        .collect();
    let request = Request {
        class: classify(req.method, req.path, &headers),
        method: req.method.map(str::to_string),
        path: req.path.map(str::to_string),
        version: req.version,
        headers,
        truncated: false,
        error: None,
        bytes: head_len,
        snippet: None,
    };
    Ok(Some((request, body)))
}

/// Best effort on a head that never ended (cut by the kernel, too long, or timed out):
/// what the complete lines say, plus a header started on the last line, classified from that.
pub(super) fn parse_partial(data: &[u8], redact_first_line: bool) -> Request {
    // Blank lines before a request line are skipped, as httparse does.
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let head = data.get(start..).unwrap_or_default();
    let mut req = match head.iter().rposition(|&b| b == b'\n') {
        None => partial_request_line(head, redact_first_line && start == 0),
        Some(last_nl) => {
            // `last_nl` is an index of `head`: the split is always there.
            let (complete, last) = head.split_at_checked(last_nl + 1).unwrap_or((head, &[]));
            // Close the header block after the last complete line so httparse reads it.
            let mut closed = complete.to_vec();
            closed.extend_from_slice(b"\r\n");
            match parse_head(&closed) {
                Ok(Some((mut req, _))) => {
                    let last = trim_cr(last);
                    if let Some(header) = partial_header(last) {
                        req.headers.push(header);
                        req.class =
                            classify(req.method.as_deref(), req.path.as_deref(), &req.headers);
                    }
                    req
                }
                Ok(None) => malformed(
                    data,
                    "truncated before the request line".to_string(),
                    true,
                    redact_first_line,
                ),
                Err(e) => malformed(data, format!("invalid HTTP: {e}"), true, redact_first_line),
            }
        }
    };
    req.truncated = true;
    req.bytes = data.len();
    req
}

/// A request line cut before its end: method and path so far, if they look like HTTP.
fn partial_request_line(data: &[u8], redact_first_line: bool) -> Request {
    let line = trim_cr(data);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next();
    let well_formed = !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && path.is_some_and(|p| p.iter().all(|&b| b > b' ' && b != 0x7f));
    match path {
        Some(path) if well_formed => {
            let method = String::from_utf8_lossy(method).into_owned();
            let path = (!path.is_empty()).then(|| String::from_utf8_lossy(path).into_owned());
            // A PUT cut inside what can still be the token path is most likely a token PUT
            // (IMDS takes no other PUT): calling it IMDSv1 would be a false alarm.
            let class = if method == "PUT" && TOKEN_PATH.starts_with(path.as_deref().unwrap_or(""))
            {
                Class::V2Token
            } else {
                classify(Some(&method), path.as_deref(), &[])
            };
            Request {
                class,
                method: Some(method),
                path,
                version: None,
                headers: Vec::new(),
                truncated: true,
                error: None,
                bytes: data.len(),
                snippet: None,
            }
        }
        _ => malformed(
            data,
            "truncated in the request line".to_string(),
            true,
            redact_first_line,
        ),
    }
}

/// A header line cut before its end, if it has a name and a colon. Kept mainly so that a
/// token header cut mid-value still makes the request IMDSv2 (and is redacted).
fn partial_header(line: &[u8]) -> Option<(String, String)> {
    let (name, colon_value) = line.split_at_checked(line.iter().position(|&b| b == b':')?)?;
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    let value = trim_ows(colon_value.get(1..)?);
    if !is_token_header(name) && value.iter().any(|&b| b < b' ' && b != b'\t' || b == 0x7f) {
        return None;
    }
    Some(header_pair(name, value))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The escaped, bounded, redacted text of raw bytes that are not a request we could parse.
/// `redact_first_line`: the bytes before the first line end may be the rest of a token
/// whose header name was cut off at the end of the socket's previous send.
fn snippet(data: &[u8], redact_first_line: bool) -> String {
    let by_name = redact_raw(data, redact_first_line);
    let redacted = redact_token_like(&by_name);
    let mut out = String::with_capacity(SNIPPET_CHARS);
    // Where to cut if the whole does not fit: room left for the "..." marker.
    let mut cut = 0;
    for &b in redacted.iter() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
        if out.len() <= SNIPPET_CHARS - 3 {
            cut = out.len();
        } else if out.len() > SNIPPET_CHARS {
            out.truncate(cut);
            out.push_str("...");
            break;
        }
    }
    out
}
