//! BEP 42: node ids tied to the node's external IP, so nobody can cheaply place many nodes
//! next to a chosen target.
//!
//! With `r` in 0..=7, the first 21 bits of a compliant id equal the first 21 bits of
//! `crc32c((ip & 0x030f3fff) | (r << 29))` (IPv4, the 4 bytes of the address) or
//! `crc32c((ip & 0x0103070f1f3f7fff) | (r << 61))` (IPv6, the high 64 bits), and the last byte of
//! the id carries `r` in its low 3 bits. The other bits are random.
//!
//! Two things the BEP text gets wrong or leaves open, settled by its test vectors (and
//! libtorrent): the IPv4 input is 4 bytes, not "a big endian 64 bit integer"; and "the last byte
//! of the hash MUST match r" means the last byte of the *id*.
//!
//! Local addresses are exempt ([`is_exempt`]): BEP 42 lists 10/8, 172.16/12, 192.168/16,
//! 169.254/16 and 127/8; natkit also exempts IPv6 loopback, link-local (fe80::/10) and unique
//! local (fc00::/7) addresses, their IPv6 counterparts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::id::{ID_BYTES, Id};

/// IPv4 mask applied before hashing (BEP 42).
const V4_MASK: u32 = 0x030f_3fff;
/// IPv6 mask applied to the high 64 bits before hashing (BEP 42).
const V6_MASK: u64 = 0x0103_070f_1f3f_7fff;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78). Bitwise: it runs on 4 or 8 bytes
/// once per node seen, so a table or hardware path would buy nothing.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// The CRC whose first 21 bits a compliant id for `ip` with random `r` (0..=7) starts with.
pub fn id_prefix_crc(ip: IpAddr, r: u8) -> u32 {
    let r = r & 7;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let masked = (u32::from(v4) & V4_MASK) | (u32::from(r) << 29);
            crc32c(&masked.to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let [high, ..] = split_v6(v6);
            let masked = (high & V6_MASK) | (u64::from(r) << 61);
            crc32c(&masked.to_be_bytes())
        }
    }
}

fn split_v6(ip: Ipv6Addr) -> [u64; 2] {
    let bits = u128::from(ip);
    // Truncating casts on purpose: high and low halves.
    [(bits >> 64) as u64, bits as u64]
}

/// A compliant id for `ip`: `random` (from a CSPRNG, supplied by the caller so this stays
/// deterministic) with its first 21 bits replaced by the CRC prefix; `r` is taken from the low
/// 3 bits of `random[19]`.
pub fn secure_id(ip: IpAddr, random: [u8; ID_BYTES]) -> Id {
    let mut id = random;
    let r = id[ID_BYTES - 1] & 7;
    let [c0, c1, c2, _] = id_prefix_crc(ip, r).to_be_bytes();
    id[0] = c0;
    id[1] = c1;
    id[2] = (c2 & 0xf8) | (id[2] & 0x07);
    Id(id)
}

/// Whether `id` follows the BEP 42 formula for `ip` (ignoring exemptions).
pub fn id_matches_ip(id: &Id, ip: IpAddr) -> bool {
    let [i0, i1, i2, .., last] = id.0;
    let [c0, c1, c2, _] = id_prefix_crc(ip, last & 7).to_be_bytes();
    i0 == c0 && i1 == c1 && (i2 & 0xf8) == (c2 & 0xf8)
}

/// Whether a node with `id` at `ip` is acceptable under BEP 42: its address is exempt or its id
/// matches. Non-compliant nodes are still served, but their tokens must not be used for
/// stores and their answers must not count toward ending a lookup.
pub fn is_compliant(id: &Id, ip: IpAddr) -> bool {
    is_exempt(ip) || id_matches_ip(id, ip)
}

/// Whether `ip` is a local address exempt from the check.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_exempt_v4(v4),
        IpAddr::V6(v6) => {
            let first = v6.segments().first().copied().unwrap_or(0);
            v6.is_loopback() || (first & 0xffc0) == 0xfe80 || (first & 0xfe00) == 0xfc00
        }
    }
}

fn is_exempt_v4(ip: Ipv4Addr) -> bool {
    ip.is_private() || ip.is_link_local() || ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard CRC-32C check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    /// BEP 42's five test vectors: (ip, rand, example id).
    const VECTORS: [(&str, u8, &str); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
        ),
    ];

    #[test]
    fn bep42_vectors() {
        for (ip, rand, id_hex) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let id = Id::from_hex(id_hex).unwrap();
            assert_eq!(id.0[19], rand);
            assert!(id_matches_ip(&id, ip), "{ip}");
            assert!(is_compliant(&id, ip));
            // Generating from the example's random bits reproduces the example.
            assert_eq!(secure_id(ip, id.0), id, "{ip}");
            // The 21st bit matters.
            let mut off = id;
            off.0[2] ^= 0x08;
            assert!(!id_matches_ip(&off, ip));
            // And so does r.
            let mut other_r = id;
            other_r.0[19] ^= 0x01;
            assert!(!id_matches_ip(&other_r, ip));
        }
        let first = Id::from_hex(VECTORS[0].2).unwrap();
        assert!(!id_matches_ip(&first, "21.75.31.124".parse().unwrap()));
    }

    #[test]
    fn ipv6_round_trip_and_mapped() {
        let ip: IpAddr = "2001:db8:1234:5678::1".parse().unwrap();
        for seed in 0..8u8 {
            let id = secure_id(ip, [seed.wrapping_mul(37); ID_BYTES]);
            assert!(id_matches_ip(&id, ip));
        }
        // A v4-mapped address is checked as IPv4.
        let id = Id::from_hex(VECTORS[0].2).unwrap();
        assert!(id_matches_ip(&id, "::ffff:124.31.75.21".parse().unwrap()));
    }

    #[test]
    fn exempt_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.5",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "fe80::1",
            "fd00::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_exempt(ip), "{ip}");
            assert!(is_compliant(&Id::default(), ip));
        }
        for ip in ["172.32.0.1", "8.8.8.8", "192.169.0.1", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_exempt(ip), "{ip}");
        }
    }
}
