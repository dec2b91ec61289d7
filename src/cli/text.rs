//! Text from the network, made safe to print for a person.
//!
//! A message, a DHT value or a router's description is whatever its sender
//! chose: a newline in it would start a line that looks like natkit's own
//! output, and an escape sequence would reach the terminal. Human-readable
//! output passes such text through [`escape_controls`]; `--json` output is
//! JSON-escaped instead and keeps the text exact.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with its control characters written as escapes, so that it prints as
/// one line and sends nothing to the terminal but text: `\n`, `\r` and `\t`;
/// `\x1b` for the other C0 controls and DEL; `\u{9b}` for C1 controls and for
/// the Unicode characters that break or reorder lines (U+2028, U+2029 and the
/// bidirectional overrides and isolates). Everything else, backslashes
/// included, is left as it is. Borrows when there is nothing to escape.
///
/// ```
/// use natkit::cli::text::escape_controls;
///
/// assert_eq!(escape_controls("hi\nforged \x1b[31mred"), "hi\\nforged \\x1b[31mred");
/// assert_eq!(escape_controls("plain"), "plain");
/// ```
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// C0 and C1 controls, DEL, line and paragraph separators, and the
/// bidirectional formatting characters (which can make text display in
/// another order than it reads).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        let forged = "hi\nmessage from abc (1.2.3.4:5 via 6.7.8.9:10): FORGED \x1b[31mred";
        let out = escape_controls(forged);
        assert!(!out.contains('\n') && !out.contains('\x1b'), "{out}");
        assert_eq!(
            out,
            "hi\\nmessage from abc (1.2.3.4:5 via 6.7.8.9:10): FORGED \\x1b[31mred"
        );
        for (input, escaped) in [
            ("\r", "\\r"),
            ("\t", "\\t"),
            ("\0", "\\x00"),
            ("\x07", "\\x07"),
            ("\x7f", "\\x7f"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("\u{85}", "\\u{85}"),
            ("a\u{202e}b", "a\\u{202e}b"),
            ("\u{2028}", "\\u{2028}"),
        ] {
            assert_eq!(escape_controls(input), escaped, "{input:?}");
        }
        // Printable text, non-ASCII letters and backslashes are left alone.
        for same in [
            "",
            "plain text",
            "héllo wörld ✓ 日本",
            "C:\\path\\n",
            "tab\\t",
        ] {
            assert!(matches!(
                escape_controls(same),
                std::borrow::Cow::Borrowed(s) if s == same
            ));
        }
    }

    #[test]
    fn every_char_escapes_to_printable_text() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let s = c.to_string();
            let out = escape_controls(&s);
            assert!(
                !out.chars()
                    .any(|o| o.is_control() || o == '\u{2028}' || o == '\u{202e}'),
                "{c:?} -> {out:?}"
            );
        }
    }
}
