//! Byte-level helpers for writing untrusted text into a one-line log: finding the first
//! byte that needs attention fast, and escaping control characters. The ground floor: this
//! module depends on nothing else in the crate.
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
    fn escaping_matches_the_char_by_char_reference() {
        for s in awkward_strings() {
            let mut out = String::from("kept ");
            push_escaped(&mut out, &s);
            assert_eq!(out, format!("kept {}", escape_reference(&s)), "{s:?}");
        }
    }
}
