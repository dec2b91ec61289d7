//! PCP options (RFC 6887 §7.3 and §13).
//!
//! ```text
//! | code(8) | reserved(8) | option length(16) | data (length bytes) | zero padding to 4 |
//! ```
//!
//! The length counts the data only, not the padding. Codes 0-127 are
//! mandatory to process, 128-255 optional. Unknown options are kept as
//! [`PcpOption::Unknown`] and skipped by their length and padding.

use std::net::Ipv6Addr;

use super::Error;
use crate::wire::{Reader, Writer};

/// Option code of THIRD_PARTY: map on behalf of another internal host.
pub const CODE_THIRD_PARTY: u8 = 1;
/// Option code of PREFER_FAILURE: fail rather than give another port.
pub const CODE_PREFER_FAILURE: u8 = 2;
/// Option code of FILTER: only let packets from this remote prefix in.
pub const CODE_FILTER: u8 = 3;

/// Data length of THIRD_PARTY: one IPv6 (or IPv4-mapped) address.
const THIRD_PARTY_BYTES: usize = 16;
/// Data length of FILTER: reserved, prefix length, port, address.
const FILTER_BYTES: usize = 20;
/// Option header length: code, reserved, length.
const OPTION_HEADER_BYTES: usize = 4;

/// A PCP option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PcpOption {
    /// THIRD_PARTY (code 1): the mapping is for this internal address, not
    /// the sender's. Gateways usually refuse it (miniupnpd does unless told
    /// otherwise).
    ThirdParty {
        /// The internal host (IPv4-mapped for IPv4).
        internal_ip: Ipv6Addr,
    },
    /// PREFER_FAILURE (code 2, no data): answer CANNOT_PROVIDE_EXTERNAL
    /// instead of mapping a different external port than suggested.
    PreferFailure,
    /// FILTER (code 3): only packets from `remote_ip/prefix_len` (and
    /// `remote_port`, 0 = any) may use the mapping.
    Filter {
        /// Prefix length in bits, 0-128 (for IPv4, 96 + the IPv4 prefix).
        prefix_len: u8,
        /// Remote port, 0 for all ports.
        remote_port: u16,
        /// Remote address (IPv4-mapped for IPv4).
        remote_ip: Ipv6Addr,
    },
    /// Any other option, carried as its code and data (without padding).
    Unknown {
        /// The option code; never 1, 2 or 3.
        code: u8,
        /// The data, without padding.
        data: Vec<u8>,
    },
}

impl PcpOption {
    /// The option code.
    pub fn code(&self) -> u8 {
        match self {
            Self::ThirdParty { .. } => CODE_THIRD_PARTY,
            Self::PreferFailure => CODE_PREFER_FAILURE,
            Self::Filter { .. } => CODE_FILTER,
            Self::Unknown { code, .. } => *code,
        }
    }

    /// Whether a server that does not know the option must reject the
    /// request (codes 0-127) rather than ignore the option.
    pub fn is_mandatory(&self) -> bool {
        self.code() < 128
    }

    /// Length of the data field (without header or padding).
    fn data_len(&self) -> usize {
        match self {
            Self::ThirdParty { .. } => THIRD_PARTY_BYTES,
            Self::PreferFailure => 0,
            Self::Filter { .. } => FILTER_BYTES,
            Self::Unknown { data, .. } => data.len(),
        }
    }

    /// Bytes the option takes on the wire: header, data and padding.
    pub fn wire_len(&self) -> usize {
        OPTION_HEADER_BYTES.saturating_add(self.data_len().saturating_add(3) & !3)
    }

    /// Checks that the option can be emitted and parses back to itself.
    pub(super) fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Filter { prefix_len, .. } if *prefix_len > 128 => Err(Error::MalformedOption {
                code: CODE_FILTER,
                reason: "prefix length over 128",
            }),
            Self::Unknown { code, .. }
                if matches!(*code, CODE_THIRD_PARTY | CODE_PREFER_FAILURE | CODE_FILTER) =>
            {
                Err(Error::MalformedOption {
                    code: *code,
                    reason: "a known option code carried as unknown",
                })
            }
            Self::Unknown { code, data } if data.len() > usize::from(u16::MAX) => {
                Err(Error::MalformedOption {
                    code: *code,
                    reason: "data longer than 65535 bytes",
                })
            }
            _ => Ok(()),
        }
    }

    /// Appends the wire form. Call [`PcpOption::validate`] first.
    pub(super) fn emit_into(&self, out: &mut Vec<u8>) {
        let len = u16::try_from(self.data_len()).unwrap_or(u16::MAX);
        out.push(self.code());
        out.push(0);
        out.put_u16(len);
        let start = out.len();
        match self {
            Self::ThirdParty { internal_ip } => out.extend_from_slice(&internal_ip.octets()),
            Self::PreferFailure => {}
            Self::Filter {
                prefix_len,
                remote_port,
                remote_ip,
            } => {
                out.push(0);
                out.push(*prefix_len);
                out.put_u16(*remote_port);
                out.extend_from_slice(&remote_ip.octets());
            }
            Self::Unknown { data, .. } => out.extend_from_slice(data),
        }
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
    }

    /// Parses all options in `buf` (the bytes after the opcode-specific
    /// data). Reserved bytes and padding are ignored, as RFC 6887 §7.3 asks.
    pub(super) fn parse_all(buf: &[u8]) -> Result<Vec<PcpOption>, Error> {
        let mut r = Reader::new(buf);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let truncated = Error::Truncated {
                what: "option header",
            };
            let code = r.u8().ok_or(truncated.clone())?;
            let _reserved = r.u8().ok_or(truncated.clone())?;
            let len = usize::from(r.u16().ok_or(truncated)?);
            let data = r.take(len).ok_or(Error::MalformedOption {
                code,
                reason: "length runs past the end of the packet",
            })?;
            let pad = (4 - len % 4) % 4;
            r.take(pad).ok_or(Error::MalformedOption {
                code,
                reason: "padding runs past the end of the packet",
            })?;
            out.push(Self::parse_one(code, data)?);
        }
        Ok(out)
    }

    /// Parses one option's data.
    fn parse_one(code: u8, data: &[u8]) -> Result<PcpOption, Error> {
        let wrong_len = Error::MalformedOption {
            code,
            reason: "wrong length for this option",
        };
        let mut r = Reader::new(data);
        let opt = match code {
            CODE_THIRD_PARTY => Self::ThirdParty {
                internal_ip: r.ipv6().ok_or(wrong_len.clone())?,
            },
            CODE_PREFER_FAILURE => Self::PreferFailure,
            CODE_FILTER => {
                let _reserved = r.u8().ok_or(wrong_len.clone())?;
                let prefix_len = r.u8().ok_or(wrong_len.clone())?;
                let remote_port = r.u16().ok_or(wrong_len.clone())?;
                let remote_ip = r.ipv6().ok_or(wrong_len.clone())?;
                if prefix_len > 128 {
                    return Err(Error::MalformedOption {
                        code,
                        reason: "prefix length over 128",
                    });
                }
                Self::Filter {
                    prefix_len,
                    remote_port,
                    remote_ip,
                }
            }
            _ => {
                return Ok(Self::Unknown {
                    code,
                    data: data.to_vec(),
                });
            }
        };
        if r.remaining() != 0 {
            return Err(wrong_len);
        }
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_options_bytes() {
        let ip: Ipv6Addr = "::ffff:10.0.1.2".parse().unwrap();
        let opts = vec![
            PcpOption::PreferFailure,
            PcpOption::ThirdParty { internal_ip: ip },
            PcpOption::Filter {
                prefix_len: 120,
                remote_port: 443,
                remote_ip: ip,
            },
        ];
        let mut bytes = Vec::new();
        for o in &opts {
            o.validate().unwrap();
            o.emit_into(&mut bytes);
        }
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 16];
        expected.extend_from_slice(&ip.octets());
        expected.extend_from_slice(&[3, 0, 0, 20, 0, 120, 0x01, 0xbb]);
        expected.extend_from_slice(&ip.octets());
        assert_eq!(bytes, expected);
        assert_eq!(PcpOption::parse_all(&bytes), Ok(opts));
    }

    #[test]
    fn unknown_option_is_skipped_with_padding() {
        // Optional option 200 with 5 data bytes, 3 padding bytes, then PREFER_FAILURE.
        let bytes = [200, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0, 2, 0, 0, 0];
        let opts = PcpOption::parse_all(&bytes).unwrap();
        assert_eq!(
            opts,
            vec![
                PcpOption::Unknown {
                    code: 200,
                    data: vec![1, 2, 3, 4, 5]
                },
                PcpOption::PreferFailure
            ]
        );
        assert!(!opts[0].is_mandatory());
        assert!(opts[1].is_mandatory());
        assert_eq!(opts[0].wire_len(), 12);
    }

    #[test]
    fn malformed_options() {
        // Length past the end.
        assert!(matches!(
            PcpOption::parse_all(&[200, 0, 0, 8, 1, 2, 3, 4]),
            Err(Error::MalformedOption { code: 200, .. })
        ));
        // Missing padding.
        assert!(matches!(
            PcpOption::parse_all(&[200, 0, 0, 1, 9]),
            Err(Error::MalformedOption { code: 200, .. })
        ));
        // Truncated header.
        assert!(matches!(
            PcpOption::parse_all(&[2, 0]),
            Err(Error::Truncated { .. })
        ));
        // PREFER_FAILURE with data; THIRD_PARTY too short.
        assert!(PcpOption::parse_all(&[2, 0, 0, 4, 0, 0, 0, 0]).is_err());
        assert!(PcpOption::parse_all(&[1, 0, 0, 4, 0, 0, 0, 0]).is_err());
        // FILTER with prefix 129.
        let mut f = vec![3, 0, 0, 20, 0, 129, 0, 0];
        f.extend_from_slice(&[0; 16]);
        assert!(PcpOption::parse_all(&f).is_err());
    }

    #[test]
    fn validate_rejects_unrepresentable() {
        assert!(
            PcpOption::Unknown {
                code: 1,
                data: vec![]
            }
            .validate()
            .is_err()
        );
        assert!(
            PcpOption::Filter {
                prefix_len: 200,
                remote_port: 0,
                remote_ip: Ipv6Addr::UNSPECIFIED
            }
            .validate()
            .is_err()
        );
    }
}
