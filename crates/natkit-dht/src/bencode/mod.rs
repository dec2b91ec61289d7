//! Bencode: the serialisation every KRPC datagram and every BEP 44 value uses.
//!
//! A [`Value`] is an integer (`i42e`), a byte string (`4:spam`), a list (`l…e`) or a
//! dictionary (`d…e`) with byte-string keys. Dictionaries are [`BTreeMap`]s, so keys are always
//! held sorted and [`emit`] always writes the canonical form.
//!
//! # Two reading modes
//! - [`parse`] (lenient) is for KRPC datagrams from other implementations: dictionary keys may
//!   arrive unsorted (some clients do that) and are sorted on the way in.
//! - [`parse_strict`] accepts only the canonical form, so `emit(parse_strict(x)?) == x`. BEP 44
//!   hashes and signs the *verbatim* encoding of `v`; a value that re-encodes differently would
//!   hash to another target, so BEP 44 values must be read in this mode.
//!
//! Both modes refuse what no valid encoder produces: leading zeros (`i03e`, `03:abc`), `-0`,
//! duplicate dictionary keys (which value would win is ambiguous), integers outside `i64`,
//! trailing bytes after the value, and anything past the limits below. Hostile input therefore
//! cannot exhaust the stack ([`MAX_DEPTH`]) or memory ([`MAX_INPUT_BYTES`], [`MAX_VALUES`]).
//! Parsing never panics.

use std::collections::BTreeMap;

/// Largest input [`parse`] accepts, in bytes. A KRPC datagram must fit one UDP payload (BEP 32
/// asks for ≤ 1024 octets, and a UDP datagram cannot exceed 64 KiB), so anything larger is
/// hostile or a mistake.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Deepest nesting of lists and dictionaries accepted. KRPC needs 3 levels (message, `a`/`r`,
/// `e` list) plus whatever a BEP 44 `v` holds; 32 leaves room for real values while bounding the
/// parser's recursion (and so its stack use) for hostile input like `llllll…`.
pub const MAX_DEPTH: usize = 32;

/// Most values (integers, strings, lists and dictionaries, counted at every depth) in one input.
/// Every value costs at least two input bytes but a [`Value`] node costs ~50 bytes of memory;
/// this caps the memory a 64 KiB input can make us allocate at well under a megabyte.
pub const MAX_VALUES: usize = 8192;

/// A bencoded value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// `i<n>e`: a signed 64-bit integer.
    Int(i64),
    /// `<len>:<bytes>`: a byte string (not necessarily UTF-8).
    Bytes(Vec<u8>),
    /// `l<values>e`: a list.
    List(Vec<Value>),
    /// `d<key><value>…e`: a dictionary; keys are byte strings, kept sorted.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// An empty dictionary.
    pub fn dict() -> Self {
        Value::Dict(BTreeMap::new())
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `self[key]` if this is a dictionary holding `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.as_dict().and_then(|d| d.get(key))
    }

    /// The canonical encoding of this value (same as [`emit`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        emit(self)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl From<BTreeMap<Vec<u8>, Value>> for Value {
    fn from(d: BTreeMap<Vec<u8>, Value>) -> Self {
        Value::Dict(d)
    }
}

/// Why an input is not (acceptable) bencode. Offsets are byte positions in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("input is {len} bytes, over the {MAX_INPUT_BYTES}-byte limit")]
    TooLarge {
        /// Input length in bytes.
        len: usize,
    },
    /// The input ended in the middle of a value.
    #[error("input ended in the middle of a value at byte {offset}")]
    UnexpectedEnd {
        /// Where more input was needed.
        offset: usize,
    },
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte 0x{byte:02x} at byte {offset}")]
    UnexpectedByte {
        /// Position of the byte.
        offset: usize,
        /// The byte itself.
        byte: u8,
    },
    /// An integer or string length with a leading zero, or `-0`.
    #[error("number at byte {offset} has a leading zero or is -0")]
    NonCanonicalNumber {
        /// Where the number starts.
        offset: usize,
    },
    /// An integer outside `i64`, or a string length outside `usize`.
    #[error("number at byte {offset} is out of range")]
    NumberOutOfRange {
        /// Where the number starts.
        offset: usize,
    },
    /// A string whose declared length runs past the end of the input.
    #[error("string at byte {offset} declares {len} bytes but the input ends first")]
    StringPastEnd {
        /// Where the string's length prefix starts.
        offset: usize,
        /// The declared length.
        len: usize,
    },
    /// Lists and dictionaries nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep {
        /// Where the level that is one too deep starts.
        offset: usize,
    },
    /// More than [`MAX_VALUES`] values in the input.
    #[error("more than {MAX_VALUES} values in one input")]
    TooManyValues,
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at byte {offset} is not a byte string")]
    KeyNotString {
        /// Where the key starts.
        offset: usize,
    },
    /// The same key twice in one dictionary.
    #[error("duplicate dictionary key at byte {offset}")]
    DuplicateKey {
        /// Where the second occurrence starts.
        offset: usize,
    },
    /// Keys not in ascending byte order ([`parse_strict`] only).
    #[error("dictionary key at byte {offset} is out of order (canonical form required)")]
    UnsortedKeys {
        /// Where the out-of-order key starts.
        offset: usize,
    },
    /// Bytes left over after one complete value.
    #[error("{extra} bytes left after the value ending at byte {offset}")]
    TrailingBytes {
        /// Where the value ended.
        offset: usize,
        /// How many bytes follow it.
        extra: usize,
    },
}

/// Parses exactly one value filling all of `input`, tolerating unsorted dictionary keys.
pub fn parse(input: &[u8]) -> Result<Value, BencodeError> {
    parse_whole(input, false)
}

/// Parses exactly one value filling all of `input`, accepting only the canonical encoding
/// (sorted keys), so that `emit(&parse_strict(x)?) == x`.
pub fn parse_strict(input: &[u8]) -> Result<Value, BencodeError> {
    parse_whole(input, true)
}

/// Parses one value at the start of `input` (lenient mode) and returns it with the number of
/// bytes it took; bytes after it are left alone.
pub fn parse_prefix(input: &[u8]) -> Result<(Value, usize), BencodeError> {
    check_size(input)?;
    let mut p = Parser::new(input, false);
    let v = p.value(0)?;
    Ok((v, p.pos))
}

/// The canonical encoding of `value`.
pub fn emit(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    emit_into(value, &mut out);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn emit_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) => {
            out.push(b'i');
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => emit_bytes(b, out),
        Value::List(l) => {
            out.push(b'l');
            for v in l {
                emit_into(v, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, v) in d {
                emit_bytes(k, out);
                emit_into(v, out);
            }
            out.push(b'e');
        }
    }
}

/// Appends `<len>:<bytes>` to `out`.
pub fn emit_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// One dictionary entry as `(key, raw encoded value)`, both borrowed from the input.
pub type RawEntry<'a> = (&'a [u8], &'a [u8]);

/// The raw encoded slice of each entry of the dictionary that fills `input`, by key, in input
/// order (lenient mode). BEP 44 signs and hashes `v` exactly as it appeared on the wire; this
/// lets a reader compare that verbatim encoding with what it parsed.
pub fn dict_raw_entries(input: &[u8]) -> Result<Vec<RawEntry<'_>>, BencodeError> {
    // Validate the whole thing first so every slice below is well-formed.
    parse(input)?;
    let mut entries = Vec::new();
    let mut p = Parser::new(input, false);
    p.expect(b'd')?;
    while p.peek()? != b'e' {
        let key = p.string()?;
        let start = p.pos;
        p.value(1)?;
        let raw = input
            .get(start..p.pos)
            .ok_or(BencodeError::UnexpectedEnd { offset: start })?;
        entries.push((key, raw));
    }
    Ok(entries)
}

fn check_size(input: &[u8]) -> Result<(), BencodeError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(BencodeError::TooLarge { len: input.len() });
    }
    Ok(())
}

fn parse_whole(input: &[u8], strict: bool) -> Result<Value, BencodeError> {
    check_size(input)?;
    let mut p = Parser::new(input, strict);
    let v = p.value(0)?;
    if p.pos != input.len() {
        return Err(BencodeError::TrailingBytes {
            offset: p.pos,
            extra: input.len() - p.pos,
        });
    }
    Ok(v)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    strict: bool,
    values: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], strict: bool) -> Self {
        Parser {
            input,
            pos: 0,
            strict,
            values: 0,
        }
    }

    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEnd { offset: self.pos })
    }

    fn expect(&mut self, byte: u8) -> Result<(), BencodeError> {
        let b = self.peek()?;
        if b != byte {
            return Err(BencodeError::UnexpectedByte {
                offset: self.pos,
                byte: b,
            });
        }
        self.pos += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(BencodeError::TooManyValues);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.number(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.string()?.to_vec())),
            b'l' => {
                let start = self.pos;
                if depth + 1 > MAX_DEPTH {
                    return Err(BencodeError::TooDeep { offset: start });
                }
                self.pos += 1;
                let mut list = Vec::new();
                while self.peek()? != b'e' {
                    list.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(list))
            }
            b'd' => {
                let start = self.pos;
                if depth + 1 > MAX_DEPTH {
                    return Err(BencodeError::TooDeep { offset: start });
                }
                self.pos += 1;
                let mut dict = BTreeMap::new();
                let mut last: Option<&[u8]> = None;
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::KeyNotString { offset: key_at });
                    }
                    let key = self.string()?;
                    if self.strict && last.is_some_and(|prev| prev >= key) {
                        return Err(if last == Some(key) {
                            BencodeError::DuplicateKey { offset: key_at }
                        } else {
                            BencodeError::UnsortedKeys { offset: key_at }
                        });
                    }
                    last = Some(key);
                    let v = self.value(depth + 1)?;
                    if dict.insert(key.to_vec(), v).is_some() {
                        return Err(BencodeError::DuplicateKey { offset: key_at });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(dict))
            }
            byte => Err(BencodeError::UnexpectedByte {
                offset: self.pos,
                byte,
            }),
        }
    }

    /// Reads `<len>:<bytes>` and returns the bytes (borrowed from the input).
    fn string(&mut self) -> Result<&'a [u8], BencodeError> {
        let start = self.pos;
        let len = self.number(b':')?;
        let len =
            usize::try_from(len).map_err(|_| BencodeError::NumberOutOfRange { offset: start })?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.input.len())
            .ok_or(BencodeError::StringPastEnd { offset: start, len })?;
        let bytes = self
            .input
            .get(self.pos..end)
            .ok_or(BencodeError::StringPastEnd { offset: start, len })?;
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a decimal number up to and including `terminator`. Only integers (terminator `e`)
    /// may be negative.
    fn number(&mut self, terminator: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let negative = terminator == b'e' && self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let mut n: i64 = 0;
        loop {
            let b = self.peek()?;
            if b == terminator && self.pos > digits_at {
                break;
            }
            if !b.is_ascii_digit() {
                return Err(BencodeError::UnexpectedByte {
                    offset: self.pos,
                    byte: b,
                });
            }
            if self.pos > digits_at && self.input.get(digits_at) == Some(&b'0') {
                return Err(BencodeError::NonCanonicalNumber { offset: start });
            }
            let digit = i64::from(b - b'0');
            // Accumulate negatively so i64::MIN is representable.
            n = n
                .checked_mul(10)
                .and_then(|n| {
                    if negative {
                        n.checked_sub(digit)
                    } else {
                        n.checked_add(digit)
                    }
                })
                .ok_or(BencodeError::NumberOutOfRange { offset: start })?;
            self.pos += 1;
        }
        if negative && n == 0 {
            return Err(BencodeError::NonCanonicalNumber { offset: start });
        }
        self.pos += 1; // the terminator
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests;
