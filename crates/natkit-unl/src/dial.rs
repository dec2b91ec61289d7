//! Who dials first when two nodes connect (pyp2p's "master"), decided from the
//! two UNLs alone so that both sides reach the same answer without talking.
//!
//! 1. If exactly one of the two accepts inbound connections
//!    ([`NodeType::Reachable`]), the other one dials it.
//! 2. Otherwise, let `lo` and `hi` be the two public keys in byte order and
//!    `h = SHA-256("natkit-dial-order-v1" || lo || hi)`. If the lowest bit of
//!    `h[0]` is 0, `lo` dials first; otherwise `hi` does. Hashing the pair
//!    (instead of "the smaller key dials") spreads the dialing work evenly:
//!    no node is the dialer for every peer.
//!
//! The same node id on both sides: neither dials.

use sha2::{Digest, Sha256};

use crate::{NodeType, Unl};

const DOMAIN: &[u8] = b"natkit-dial-order-v1";

pub(crate) fn dials_first(us: &Unl, them: &Unl) -> bool {
    if us.node_id == them.node_id {
        return false;
    }
    let reachable = |u: &Unl| u.node == NodeType::Reachable;
    match (reachable(us), reachable(them)) {
        (false, true) => return true,
        (true, false) => return false,
        _ => {}
    }
    let (lo, hi) = if us.node_id < them.node_id {
        (us, them)
    } else {
        (them, us)
    };
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(lo.node_id.as_bytes());
    h.update(hi.node_id.as_bytes());
    let lo_dials = h.finalize()[0] & 1 == 0;
    let we_are_lo = std::ptr::eq(lo, us);
    lo_dials == we_are_lo
}
