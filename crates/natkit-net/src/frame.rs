//! Frames: what travels on a connection after the handshake (sans-I/O).
//!
//! On the wire every frame is a 2-byte big-endian length followed by that many
//! bytes of body. With encryption (the default) the body is a Noise transport
//! message (ChaCha20-Poly1305, 16-byte tag) whose plaintext is the frame
//! content; in plaintext mode the body is the frame content itself.
//!
//! Frame content: one type byte, then
//! - `0` DATA: bytes of the line stream (lines may span frames),
//! - `1` PING and `2` PONG: keepalive, no payload,
//! - `3` CLOSE: a [`CloseCode`] byte and a UTF-8 message of at most
//!   [`MAX_CLOSE_MESSAGE_BYTES`], telling the peer why we close.

/// Largest frame body (the length prefix is 16 bits).
pub const MAX_FRAME_BODY: usize = 65535;
/// Noise's authentication tag.
pub const TAG_BYTES: usize = 16;
/// Most line-stream bytes in one encrypted DATA frame.
pub const MAX_DATA_ENCRYPTED: usize = MAX_FRAME_BODY - TAG_BYTES - 1;
/// Most line-stream bytes in one plaintext DATA frame.
pub const MAX_DATA_PLAINTEXT: usize = MAX_FRAME_BODY - 1;
/// Longest reason message in a CLOSE frame.
pub const MAX_CLOSE_MESSAGE_BYTES: usize = 256;

const T_DATA: u8 = 0;
const T_PING: u8 = 1;
const T_PONG: u8 = 2;
const T_CLOSE: u8 = 3;

/// Why a connection was closed, as told to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseCode {
    /// The application closed the connection.
    Normal,
    /// The node is shutting down.
    Shutdown,
    /// The peer sent a line longer than our limit.
    LineTooLong,
    /// The peer sent a line that is not UTF-8.
    InvalidUtf8,
    /// Another connection to the same node was kept instead of this one.
    Duplicate,
    /// The peer broke the protocol.
    Protocol,
    /// The peer stopped answering keepalives.
    DeadPeer,
    /// A code this version does not know.
    Other,
}

impl CloseCode {
    fn to_byte(self) -> u8 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::Shutdown => 1,
            CloseCode::LineTooLong => 2,
            CloseCode::InvalidUtf8 => 3,
            CloseCode::Duplicate => 4,
            CloseCode::Protocol => 5,
            CloseCode::DeadPeer => 6,
            CloseCode::Other => 255,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            0 => CloseCode::Normal,
            1 => CloseCode::Shutdown,
            2 => CloseCode::LineTooLong,
            3 => CloseCode::InvalidUtf8,
            4 => CloseCode::Duplicate,
            5 => CloseCode::Protocol,
            6 => CloseCode::DeadPeer,
            _ => CloseCode::Other,
        }
    }
}

/// A decoded frame content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Line-stream bytes.
    Data(&'a [u8]),
    /// Are you there?
    Ping,
    /// I am here.
    Pong,
    /// I am closing, and why.
    Close {
        /// The reason code.
        code: CloseCode,
        /// A human-readable reason.
        message: String,
    },
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty frame (no type byte).
    #[error("empty frame")]
    Empty,
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A PING or PONG with a payload, or a CLOSE without its code.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// Decodes frame content. Never panics.
pub fn parse(content: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (&ty, rest) = content.split_first().ok_or(FrameError::Empty)?;
    match ty {
        T_DATA => Ok(Frame::Data(rest)),
        T_PING if rest.is_empty() => Ok(Frame::Ping),
        T_PONG if rest.is_empty() => Ok(Frame::Pong),
        T_PING => Err(FrameError::Malformed("PING")),
        T_PONG => Err(FrameError::Malformed("PONG")),
        T_CLOSE => {
            let (&code, msg) = rest.split_first().ok_or(FrameError::Malformed("CLOSE"))?;
            let msg = &msg[..msg.len().min(MAX_CLOSE_MESSAGE_BYTES)];
            Ok(Frame::Close {
                code: CloseCode::from_byte(code),
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        t => Err(FrameError::UnknownType(t)),
    }
}

/// Appends the content of `frame` to `out` (the inverse of [`parse`]).
pub fn emit(frame: &Frame<'_>, out: &mut Vec<u8>) {
    match frame {
        Frame::Data(d) => {
            out.push(T_DATA);
            out.extend_from_slice(d);
        }
        Frame::Ping => out.push(T_PING),
        Frame::Pong => out.push(T_PONG),
        Frame::Close { code, message } => {
            out.push(T_CLOSE);
            out.push(code.to_byte());
            let mut end = message.len().min(MAX_CLOSE_MESSAGE_BYTES);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&message.as_bytes()[..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for f in [
            Frame::Data(b"a\nb"),
            Frame::Data(b""),
            Frame::Ping,
            Frame::Pong,
            Frame::Close {
                code: CloseCode::LineTooLong,
                message: "too long".into(),
            },
        ] {
            let mut out = Vec::new();
            emit(&f, &mut out);
            assert_eq!(parse(&out).unwrap(), f);
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(parse(b""), Err(FrameError::Empty));
        assert_eq!(parse(b"\x09"), Err(FrameError::UnknownType(9)));
        assert_eq!(parse(b"\x01x"), Err(FrameError::Malformed("PING")));
        assert_eq!(parse(b"\x03"), Err(FrameError::Malformed("CLOSE")));
    }

    #[test]
    fn close_message_is_cut_at_a_char_boundary() {
        let long = "é".repeat(300);
        let mut out = Vec::new();
        emit(
            &Frame::Close {
                code: CloseCode::Normal,
                message: long,
            },
            &mut out,
        );
        assert!(out.len() <= 2 + MAX_CLOSE_MESSAGE_BYTES);
        let Frame::Close { message, .. } = parse(&out).unwrap() else {
            panic!()
        };
        assert!(message.chars().all(|c| c == 'é'));
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&b);
        }
    }
}
