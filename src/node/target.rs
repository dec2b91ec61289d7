//! [`Target`]: whom [`Node::connect`](crate::Node::connect) connects to — a
//! UNL, or a bare node id to look up in the DHT.

use std::fmt;
use std::str::FromStr;

use natkit_identity::{
    DHT_ID_HEX_LEN, IdentityError, NODE_ID_TEXT_LEN, NodeId, PUBLIC_KEY_HEX_LEN,
};
use natkit_unl::{TEXT_PREFIX, Unl, UnlError};

/// Most characters of a refused target quoted back in [`TargetError::Unknown`]:
/// enough to recognise it, not enough to flood a log line.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Whom to connect to.
///
/// Parsed from text ([`FromStr`]): a UNL (`nk...`, its checksum and signature
/// checked), or a node id (52 base32 characters, or the 64 hex digits of the
/// public key), which [`Node::connect`](crate::Node::connect) looks up in the
/// DHT.
///
/// ```
/// use natkit::identity::Keypair;
/// use natkit::node::Target;
/// use natkit::unl::Unl;
///
/// let id = Keypair::from_seed([3; 32]).node_id();
/// let by_id: Target = id.to_string().parse().unwrap();
/// assert_eq!(by_id, Target::NodeId(id));
///
/// let by_unl: Target = Unl::new(id).emit().parse().unwrap();
/// assert_eq!(by_unl.node_id(), id);
/// assert!(matches!(by_unl, Target::Unl(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A UNL: its addresses are dialed as they are.
    Unl(Box<Unl>),
    /// A node id: its UNL is looked up in the DHT first.
    NodeId(NodeId),
}

impl Target {
    /// The node id of the target.
    ///
    /// ```
    /// use natkit::identity::Keypair;
    /// use natkit::node::Target;
    ///
    /// let id = Keypair::from_seed([3; 32]).node_id();
    /// assert_eq!(Target::from(id).node_id(), id);
    /// ```
    pub fn node_id(&self) -> NodeId {
        match self {
            Target::Unl(u) => u.node_id,
            Target::NodeId(id) => *id,
        }
    }
}

impl From<Unl> for Target {
    fn from(unl: Unl) -> Self {
        Target::Unl(Box::new(unl))
    }
}

impl From<NodeId> for Target {
    fn from(id: NodeId) -> Self {
        Target::NodeId(id)
    }
}

impl fmt::Display for Target {
    /// The UNL's text, or the node id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unl(u) => f.write_str(&u.emit()),
            Target::NodeId(id) => write!(f, "{id}"),
        }
    }
}

/// Why a text is not a [`Target`].
///
/// ```
/// use natkit::node::{Target, TargetError};
///
/// let err = "hello".parse::<Target>().unwrap_err();
/// assert!(matches!(err, TargetError::Unknown { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// It has the length of a node id but is not one (or is a DHT id).
    #[error("not a node id: {0}")]
    NodeId(String),
    /// It starts like a UNL but is not a valid one.
    #[error(transparent)]
    Unl(#[from] UnlError),
    /// Neither a UNL nor a node id.
    #[error(
        "{text:?} is neither a UNL (\"{TEXT_PREFIX}...\") nor a node id ({NODE_ID_TEXT_LEN} base32 characters or {PUBLIC_KEY_HEX_LEN} hex digits)"
    )]
    Unknown {
        /// The text (its first [`MAX_QUOTED_CHARS`] characters).
        text: String,
    },
}

impl From<IdentityError> for TargetError {
    fn from(e: IdentityError) -> Self {
        TargetError::NodeId(e.to_string())
    }
}

impl FromStr for Target {
    type Err = TargetError;

    /// A node id when the text has a node id's (or a DHT id's, to explain the
    /// mistake) length, else a UNL when it starts with `nk`. Never panics.
    fn from_str(text: &str) -> Result<Self, TargetError> {
        let s = text.trim();
        if [NODE_ID_TEXT_LEN, PUBLIC_KEY_HEX_LEN, DHT_ID_HEX_LEN].contains(&s.len()) {
            return Ok(Target::NodeId(NodeId::parse_any(s)?));
        }
        if s.starts_with(TEXT_PREFIX) {
            return Ok(Target::from(Unl::parse(s)?));
        }
        Err(TargetError::Unknown {
            text: s.chars().take(MAX_QUOTED_CHARS).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_identity::Keypair;

    #[test]
    fn node_ids_unls_and_mistakes() {
        let key = Keypair::from_seed([9; 32]);
        let id = key.node_id();
        assert_eq!(id.to_hex().parse::<Target>(), Ok(Target::NodeId(id)));
        let mut unl = Unl::new(id);
        unl.add_addr(natkit_unl::AddrSource::Lan, "127.0.0.1:5".parse().unwrap())
            .unwrap();
        unl.sign(&key).unwrap();
        let t: Target = format!(" {} ", unl.emit()).parse().unwrap();
        assert_eq!(t, Target::from(unl.clone()));
        assert_eq!(t.to_string(), unl.emit());
        let dht_id = "0123456789abcdef0123456789abcdef01234567";
        assert!(matches!(
            dht_id.parse::<Target>(),
            Err(TargetError::NodeId(_))
        ));
        let mut cut = unl.emit();
        cut.truncate(cut.len() - 3);
        assert!(matches!(cut.parse::<Target>(), Err(TargetError::Unl(_))));
        let long = "x".repeat(500);
        match long.parse::<Target>() {
            Err(TargetError::Unknown { text }) => assert_eq!(text.len(), MAX_QUOTED_CHARS),
            other => panic!("{other:?}"),
        }
    }
}
