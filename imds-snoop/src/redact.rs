//! Token redaction: every token value seen on the wire or in a caller's argv is replaced
//! with [`TOKEN_REDACTED`] before anything else keeps it. One scanner serves request bytes
//! (`http`) and argv (`process`), so the attribution layer need not reach into the HTTP
//! parser. The ground floor: this module depends on nothing else in the crate.
// Bytes from the wire: no str slice that could panic on a multi-byte character. Byte
// slices and indexes here follow a search over the same bytes (`clippy::indexing_slicing`
// is not on yet: about 20 sites to move to `get`).
#![warn(clippy::string_slice)]

use std::borrow::Cow;

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
