//! Byte-level helpers for writing untrusted text into a one-line log: finding the first
//! byte that needs attention fast, escaping control characters, and defusing the line's own
//! field labels inside a value. The ground floor: this module depends on nothing else in
//! the crate (the labels come from the line contract crate, `imds-snoop-line`).
#![warn(clippy::indexing_slicing, clippy::string_slice)]

/// `s` made safe for a one-line log (see [`push_escaped`]).
pub(crate) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// The first byte of `bytes` for which `special` holds. Looks at 16 bytes at a time with no
/// branch per byte, which the compiler vectorizes: argv and header values are mostly long
/// runs with nothing to escape, and a byte-at-a-time scan of them was 10% of the daemon.
#[inline]
pub(crate) fn find_byte(bytes: &[u8], special: impl Fn(u8) -> bool + Copy) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(16);
    let mut offset = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            return chunk.iter().position(|&b| special(b)).map(|i| offset + i);
        }
        offset += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| special(b))
        .map(|i| offset + i)
}

/// Appends `s` made safe for a one-line log: control characters (a newline in an argv or a
/// header could forge a whole line) become `\xNN`. Runs without any are copied whole.
pub(crate) fn push_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s;
    loop {
        // Bytes that can start a control character: C0 and DEL, and 0xc2, the first byte of
        // the C1 controls U+0080..U+009F (and of other Latin-1 characters).
        let plain = find_byte(rest.as_bytes(), |b| b < 0x20 || b == 0x7f || b == 0xc2)
            .unwrap_or(rest.len());
        // `plain` is at an ASCII byte or a lead byte (0xc2): a char boundary.
        let (head, tail) = rest.split_at_checked(plain).unwrap_or((rest, ""));
        out.push_str(head);
        let mut chars = tail.chars();
        let Some(c) = chars.next() else { return };
        if c.is_control() {
            // Controls are at most U+009F: two hex digits.
            let code = c as usize;
            out.push_str("\\x");
            for nibble in [code >> 4 & 0xf, code & 0xf] {
                out.push(HEX.get(nibble).map_or('0', |&b| char::from(b)));
            }
        } else {
            out.push(c);
        }
        rest = chars.as_str();
    }
}

/// The labels a value must not be able to write: every separator and field label of the
/// line contract ([`imds_snoop_line::label::ALL`]) that holds a `:` or a `>` (`(pid:`,
/// ` argv:`, ` -> `, ` req details: `, `container:`, `pod:`, `uid:`, `dst:`, ... and any
/// label added later with one). Labels without either (`truncated`, `-`, `, `) are words a
/// value may hold; a reader finds them only after the daemon's own fields.
fn defused_labels() -> impl Iterator<Item = &'static str> {
    imds_snoop_line::label::ALL
        .into_iter()
        .filter(|l| l.contains([':', '>']))
}

/// Appends `s` as [`push_escaped`] does, and with every field label of the line (see
/// [`defused_labels`]) that occurs in it defused: its `:` written `\x3a`, its `>` written
/// `\x3e`, so an argv, comm, unit or request cannot make its line look like it has another
/// caller, pod or status (`grep pod:kube-system/x` and `report` read each field from where
/// the daemon wrote it). `keep`: a label the caller writes inside `s` itself (the request
/// details' `user-agent: `), left as it is.
pub(crate) fn push_field(out: &mut String, s: &str, keep: Option<&str>) {
    let start = out.len();
    push_escaped(out, s);
    let Some(written) = out.get(start..) else {
        return;
    };
    if !written.contains([':', '>']) {
        return;
    }
    let mut field = written.to_owned();
    for label in defused_labels().filter(|l| Some(*l) != keep) {
        if field.contains(label) {
            let defused = label.replace(':', "\\x3a").replace('>', "\\x3e");
            field = field.replace(label, &defused);
        }
    }
    out.truncate(start);
    out.push_str(&field);
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index what they just checked; a panic there is a failed test"
)]
pub(crate) mod tests {
    use super::*;

    /// `escape_controls` as it was before the fast path (char by char): the reference.
    pub(crate) fn escape_reference(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if c.is_control() {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Strings of ASCII, controls (C0, DEL, C1), tabs, backslashes and non-ASCII letters
    /// whose lowercase is longer or a different width (`İ`, `Σ`, `Ａ`), from a fixed seed.
    pub(crate) fn awkward_strings() -> Vec<String> {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "GET",
            " ",
            "\t",
            "\r",
            "\n",
            "\0",
            "\x1b",
            "\x7f",
            "\u{85}",
            "\u{9f}",
            "\u{a0}",
            "\\",
            "\\x0a",
            "İ",
            "Σ",
            "Ａ",
            "é",
            "ß",
            "😀",
            "/latest/api/token",
            ":",
            "\u{2028}",
            "\u{feff}",
        ];
        let mut seed = 0x9e37_79b9_u32;
        let mut out = vec![String::new(), "plain ascii / path?x=1".into()];
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(seed % 12) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                s.push_str(PIECES[(seed >> 16) as usize % PIECES.len()]);
            }
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            out.push(s);
        }
        out
    }

    #[test]
    fn find_byte_finds_the_first_special_byte_at_every_offset() {
        for len in 0..70 {
            for at in 0..=len {
                let mut bytes = vec![b'a'; len];
                if at < len {
                    bytes[at] = b'\n';
                    if at + 1 < len {
                        bytes[at + 1] = b'\r';
                    }
                }
                let expect = (at < len).then_some(at);
                assert_eq!(find_byte(&bytes, |b| b < 0x20), expect, "{len} {at}");
            }
        }
    }

    #[test]
    fn labels_in_a_value_are_defused() {
        let mut out = String::new();
        push_field(
            &mut out,
            "x\n[INFO] imdsv2 (pid:1:y argv:z) called by -> (pid:1:init) req details: get / \
             http/1.1, -> 200 container:abc pod:kube-system/forged uid:0 dst:1.2.3.4:80\x1b[2J",
            None,
        );
        assert_eq!(
            out,
            "x\\x0a[INFO] imdsv2 (pid\\x3a1:y argv\\x3az) called by -\\x3e (pid\\x3a1:init) \
             req details\\x3a get / http/1.1, -\\x3e 200 container\\x3aabc \
             pod\\x3akube-system/forged uid\\x3a0 dst\\x3a1.2.3.4:80\\x1b[2J"
        );
        for label in defused_labels() {
            assert!(!out.contains(label), "{label} left in {out}");
        }
        // Plain values are untouched; a kept label stays.
        let mut out = String::from("a ");
        push_field(&mut out, "curl http://169.254.169.254/latest/", None);
        assert_eq!(out, "a curl http://169.254.169.254/latest/");
        let mut out = String::new();
        push_field(
            &mut out,
            "get / http/1.1, user-agent: x pod:y,",
            Some("user-agent: "),
        );
        assert_eq!(out, "get / http/1.1, user-agent: x pod\\x3ay,");
    }

    #[test]
    fn escaping_matches_the_char_by_char_reference() {
        for s in awkward_strings() {
            let mut out = String::from("kept ");
            push_escaped(&mut out, &s);
            assert_eq!(out, format!("kept {}", escape_reference(&s)), "{s:?}");
        }
    }
}
