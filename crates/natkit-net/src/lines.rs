//! Lines: the unit of data on a connection (sans-I/O).
//!
//! A line is UTF-8 text terminated by `\n`; a `\r` right before the `\n` is
//! removed, so `\r\n` is accepted too. Empty lines are delivered as empty
//! strings. A line longer than the limit (counted without its terminator), or
//! one that is not UTF-8, is an error that ends the connection: the decoder never
//! buffers more than the limit.

/// Why a stream of bytes is not a stream of lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line is longer than the limit.
    #[error("line longer than {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// A line to be sent contains `\n`, or ends with `\r` (which the receiver
    /// would strip).
    #[error("a line cannot contain \\n or end with \\r")]
    Newline,
}

/// Splits a byte stream into lines, with a length limit.
///
/// ```
/// use natkit_net::lines::LineDecoder;
///
/// let mut d = LineDecoder::new(16);
/// let mut out = Vec::new();
/// d.feed(b"hello\r\nwor", &mut out).unwrap();
/// d.feed(b"ld\n\n", &mut out).unwrap();
/// assert_eq!(out, ["hello", "world", ""]);
/// assert!(d.feed(&[b'x'; 18], &mut out).is_err());
/// ```
#[derive(Debug)]
pub struct LineDecoder {
    partial: Vec<u8>,
    limit: usize,
}

impl LineDecoder {
    /// A decoder for lines of at most `limit` bytes (without the terminator).
    pub fn new(limit: usize) -> Self {
        LineDecoder {
            partial: Vec::new(),
            limit,
        }
    }

    /// Bytes of an unfinished line held.
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; complete lines are appended to `out`. After an error the
    /// decoder must not be used again (the connection is closed).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<String>) -> Result<(), LineError> {
        while let Some(pos) = memchr::memchr(b'\n', data) {
            let (head, rest) = data.split_at(pos);
            data = rest.get(1..).unwrap_or_default();
            let line = if self.partial.is_empty() {
                finish(head, self.limit)?
            } else {
                self.partial.extend_from_slice(head);
                let l = finish(&self.partial, self.limit)?;
                self.partial.clear();
                if self.partial.capacity() > 64 * 1024 {
                    self.partial = Vec::new();
                }
                l
            };
            out.push(line);
        }
        // Room for one `\r` beyond the limit: it may turn out to be the first
        // half of a `\r\n` terminator.
        if self.partial.len() + data.len() > self.limit + 1 {
            return Err(LineError::TooLong { limit: self.limit });
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }
}

fn finish(raw: &[u8], limit: usize) -> Result<String, LineError> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.len() > limit {
        return Err(LineError::TooLong { limit });
    }
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| LineError::InvalidUtf8)
}

/// Checks a line to be sent: at most `limit` bytes, no `\n` inside, no `\r`
/// at the end (it would be taken for half of a `\r\n`).
pub fn check_outgoing(line: &str, limit: usize) -> Result<(), LineError> {
    if line.len() > limit {
        return Err(LineError::TooLong { limit });
    }
    if line.ends_with('\r') || memchr::memchr(b'\n', line.as_bytes()).is_some() {
        return Err(LineError::Newline);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(limit: usize, chunks: &[&[u8]]) -> Result<Vec<String>, LineError> {
        let mut d = LineDecoder::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn crlf_lf_and_empty_lines() {
        assert_eq!(all(10, &[b"a\r\n\nb\n\r\n"]).unwrap(), ["a", "", "b", ""]);
    }

    #[test]
    fn limit_is_exact() {
        assert_eq!(all(3, &[b"abc\n"]).unwrap(), ["abc"]);
        assert_eq!(all(3, &[b"abc\r\n"]).unwrap(), ["abc"]);
        assert_eq!(all(3, &[b"ab", b"c\r", b"\n"]).unwrap(), ["abc"]);
        assert_eq!(all(3, &[b"abcd\n"]), Err(LineError::TooLong { limit: 3 }));
        // Detected before the terminator arrives: nothing unbounded is held.
        assert_eq!(
            all(3, &[b"ab", b"cde"]),
            Err(LineError::TooLong { limit: 3 })
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_even_across_chunks() {
        assert_eq!(all(10, &[b"\xff\n"]), Err(LineError::InvalidUtf8));
        // A multi-byte character split across two reads is fine.
        let s = "héllo\n".as_bytes();
        assert_eq!(all(10, &[&s[..2], &s[2..]]).unwrap(), ["héllo"]);
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_lines(
            lines in proptest::collection::vec("[a-zé ]{0,20}", 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..5),
            crlf in any::<bool>(),
        ) {
            let term = if crlf { "\r\n" } else { "\n" };
            let stream: String = lines.iter().map(|l| format!("{l}{term}")).collect();
            let bytes = stream.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for p in points { chunks.push(&bytes[prev..p]); prev = p; }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(all(64, &chunks).unwrap(), lines);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), limit in 0usize..50) {
            let _ = all(limit, &[&data]);
        }
    }
}
