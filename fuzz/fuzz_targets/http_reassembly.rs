//! The request reassembler and parser (imds-snoop/src/http.rs) on arbitrary bytes.
//!
//! Input: two control bytes (where to split), one flag byte, then the payload of one socket.
//! Properties, checked on every input:
//! - nothing panics, and nothing stays pending after `drain` (memory is bounded);
//! - output is bounded: a request's `details()` is at most 8x the bytes pushed (escaping a
//!   control character costs at most 8 chars), a malformed snippet at most 256 chars;
//! - redaction: when a token header line is injected (flag bit 0), no 16-char piece of its
//!   value appears in any field of any request, however the bytes are split or cut (inputs
//!   that hold a 13-char piece of it themselves are skipped: an escape such as `\x0a` can
//!   put 3 more token characters next to them);
//! - stability: a socket's bytes in one send or split in two at any point give the same
//!   requests (class, method, path, headers), unless the whole is malformed or truncated
//!   (malformed bytes have no request boundary to resynchronise on; see `comparable`).
#![no_main]

use std::{
    collections::HashSet,
    sync::OnceLock,
    time::{Duration, Instant},
};

use imds_snoop::http::{Class, Reassembler, Request};
use libfuzzer_sys::fuzz_target;

/// Shaped like an IMDS token (56 base64 characters), never in the seeds.
const TOKEN: &str = "AQAEAInjectedFuzzToken0123456789ZYXWVUTSRQPONMLKabcdefg==";
/// Shortest piece of the token that must not leak (the parser's own token-shape threshold).
const PIECE: usize = 16;
/// Token-alphabet characters an escape can put next to input bytes: `x0a` of `\x0a`.
const ESCAPE_CHARS: usize = 3;
/// Small, so that the over-the-bound path is exercised by short inputs too.
const MAX_REQUEST_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let [s0, s1, flags, payload @ ..] = data else {
        return;
    };
    let mut bytes = payload.to_vec();
    let inject = flags & 1 != 0;
    if inject {
        if contains_piece(payload, &pieces(PIECE - ESCAPE_CHARS)) {
            // The fuzzer wrote (most of) a piece of the token itself, say in a path: that is
            // not a leak, even once an escape's letters (`\x0a`) complete it.
            return;
        }
        // Anywhere: in a header block, a request line, a value or garbage, it must go.
        let at = usize::from(u16::from_le_bytes([*s1, *s0])) % (bytes.len() + 1);
        let line = format!("X-aws-ec2-metadata-token: {TOKEN}\r\n");
        bytes.splice(at..at, line.bytes());
    }
    let split = usize::from(u16::from_le_bytes([*s0, *s1])) % (bytes.len() + 1);
    let total = bytes.len();

    let whole = run(&[(&bytes, false)]);
    let split_in_two = run(&[(&bytes[..split], false), (&bytes[split..], false)]);
    // The kernel copied only the first part of a send: the rest is never seen.
    let cut = run(&[(&bytes[..split], true)]);

    let mut all = String::new();
    for req in whole.iter().chain(&split_in_two).chain(&cut) {
        check_bounded(req, total);
        if inject {
            all.push_str(&format!("{}\n{req:?}\n", req.details()));
        }
    }
    static OUTPUT_PIECES: OnceLock<HashSet<Vec<u8>>> = OnceLock::new();
    let output_pieces = OUTPUT_PIECES.get_or_init(|| pieces(PIECE));
    assert!(
        !contains_piece(all.as_bytes(), output_pieces),
        "token value in the output: {all}"
    );
    if comparable(&whole) {
        assert_eq!(
            summary(&whole),
            summary(&split_in_two),
            "split at {split} changed the requests"
        );
    }
});

/// Pushes sends on one socket, then drains (as at shutdown): every request, in order.
fn run(sends: &[(&[u8], bool)]) -> Vec<Request> {
    let mut r = Reassembler::new(MAX_REQUEST_BYTES, Duration::from_secs(2));
    let now = Instant::now();
    let mut out = Vec::new();
    for (i, (bytes, truncated)) in sends.iter().enumerate() {
        out.extend(r.push(7, i, bytes, *truncated, now));
    }
    out.extend(r.drain());
    assert_eq!(r.pending(), 0, "drain leaves nothing pending");
    // Requests come out in the order of the sends that started them.
    assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    out.into_iter().map(|(_, req)| req).collect()
}

fn check_bounded(req: &Request, total: usize) {
    let details = req.details();
    assert!(
        details.len() <= 8 * total + 64,
        "details of {} bytes from {total} input bytes",
        details.len()
    );
    if let Some(snippet) = &req.snippet {
        assert!(
            snippet.chars().count() <= 256,
            "snippet of {}",
            snippet.len()
        );
    }
}

/// The token's pieces of `n` characters, lowercased (details are lowercased).
fn pieces(n: usize) -> HashSet<Vec<u8>> {
    TOKEN
        .to_ascii_lowercase()
        .as_bytes()
        .windows(n)
        .map(<[u8]>::to_vec)
        .collect()
}

/// Whether any of `pieces` (all of one length) is in `hay`, in any case: one hashed pass
/// (a naive search per piece made the target a hundred times slower).
fn contains_piece(hay: &[u8], pieces: &HashSet<Vec<u8>>) -> bool {
    let Some(n) = pieces.iter().next().map(Vec::len) else {
        return false;
    };
    hay.to_ascii_lowercase()
        .windows(n)
        .any(|w| pieces.contains(w))
}

/// Whole-input results that a split must reproduce: well-formed and complete requests.
/// Malformed bytes are emitted as one request up to the end of the send they are in, so a
/// split there legitimately changes what follows; a truncated (over-long) head is skipped
/// up to a blank line, and a send that starts like a request ends that skip early.
fn comparable(reqs: &[Request]) -> bool {
    reqs.iter()
        .all(|r| r.class != Class::Malformed && !r.truncated)
}

/// What a split must not change: class, method, path, headers.
type Summary<'a> = (
    Class,
    Option<&'a str>,
    Option<&'a str>,
    &'a [(String, String)],
);

fn summary(reqs: &[Request]) -> Vec<Summary<'_>> {
    reqs.iter()
        .map(|r| {
            (
                r.class,
                r.method.as_deref(),
                r.path.as_deref(),
                &r.headers[..],
            )
        })
        .collect()
}
