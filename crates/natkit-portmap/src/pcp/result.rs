//! PCP result codes (RFC 6887 §7.4).

/// A PCP result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: the request succeeded.
    Success,
    /// 1: the server does not speak this PCP version.
    UnsupportedVersion,
    /// 2: the request is valid but the server refuses it.
    NotAuthorized,
    /// 3: the request could not be parsed.
    MalformedRequest,
    /// 4: the server does not know this opcode.
    UnsupportedOpcode,
    /// 5: a mandatory option is not supported.
    UnsupportedOption,
    /// 6: an option is malformed or appears too often.
    MalformedOption,
    /// 7: the server has a network failure (e.g. no external address yet).
    NetworkFailure,
    /// 8: the server is short of resources (mappings, memory, ports).
    NoResources,
    /// 9: the protocol (e.g. SCTP) is not supported.
    UnsupportedProtocol,
    /// 10: this user has reached their mapping quota.
    UserExceededQuota,
    /// 11: the suggested external port or address cannot be given and
    /// PREFER_FAILURE was set.
    CannotProvideExternal,
    /// 12: the source address of the packet differs from the client IP
    /// field: there is another NAT between us and the PCP server.
    AddressMismatch,
    /// 13: too many FILTER remote peers.
    ExcessiveRemotePeers,
    /// A code this crate does not know (14 and up).
    Unknown(u8),
}

impl ResultCode {
    /// The result code for a wire value.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::MalformedRequest,
            4 => Self::UnsupportedOpcode,
            5 => Self::UnsupportedOption,
            6 => Self::MalformedOption,
            7 => Self::NetworkFailure,
            8 => Self::NoResources,
            9 => Self::UnsupportedProtocol,
            10 => Self::UserExceededQuota,
            11 => Self::CannotProvideExternal,
            12 => Self::AddressMismatch,
            13 => Self::ExcessiveRemotePeers,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedVersion => 1,
            Self::NotAuthorized => 2,
            Self::MalformedRequest => 3,
            Self::UnsupportedOpcode => 4,
            Self::UnsupportedOption => 5,
            Self::MalformedOption => 6,
            Self::NetworkFailure => 7,
            Self::NoResources => 8,
            Self::UnsupportedProtocol => 9,
            Self::UserExceededQuota => 10,
            Self::CannotProvideExternal => 11,
            Self::AddressMismatch => 12,
            Self::ExcessiveRemotePeers => 13,
            Self::Unknown(v) => v,
        }
    }

    /// Whether this is [`ResultCode::Success`].
    pub const fn is_success(self) -> bool {
        matches!(self, Self::Success)
    }

    /// Whether the error is short-lived (RFC 6887 §7.4: NETWORK_FAILURE,
    /// NO_RESOURCES, USER_EX_QUOTA and CANNOT_PROVIDE_EXTERNAL may clear soon);
    /// for the others, retrying the same request will fail the same way.
    /// The response's lifetime says how long the error holds.
    pub const fn is_short_lifetime_error(self) -> bool {
        matches!(
            self,
            Self::NetworkFailure
                | Self::NoResources
                | Self::UserExceededQuota
                | Self::CannotProvideExternal
        )
    }

    /// The RFC's name for the code (e.g. `"NOT_AUTHORIZED"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::UnsupportedVersion => "UNSUPP_VERSION",
            Self::NotAuthorized => "NOT_AUTHORIZED",
            Self::MalformedRequest => "MALFORMED_REQUEST",
            Self::UnsupportedOpcode => "UNSUPP_OPCODE",
            Self::UnsupportedOption => "UNSUPP_OPTION",
            Self::MalformedOption => "MALFORMED_OPTION",
            Self::NetworkFailure => "NETWORK_FAILURE",
            Self::NoResources => "NO_RESOURCES",
            Self::UnsupportedProtocol => "UNSUPP_PROTOCOL",
            Self::UserExceededQuota => "USER_EX_QUOTA",
            Self::CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL",
            Self::AddressMismatch => "ADDRESS_MISMATCH",
            Self::ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS",
            Self::Unknown(_) => "UNKNOWN",
        }
    }

    /// What the result means for the user, in words they can act on.
    pub const fn advice(self) -> &'static str {
        match self {
            Self::Success => "the gateway granted the request",
            Self::UnsupportedVersion => {
                "the gateway does not speak PCP version 2; fall back to NAT-PMP or UPnP"
            }
            Self::NotAuthorized => {
                "the gateway refused: PCP may be turned off in the router's settings, \
                 or the port is outside the range it allows"
            }
            Self::MalformedRequest => {
                "the gateway could not parse our request; this is a bug in natkit or the gateway"
            }
            Self::UnsupportedOpcode => {
                "the gateway does not support this request; fall back to NAT-PMP or UPnP"
            }
            Self::UnsupportedOption => {
                "the gateway does not support a mandatory option we sent; retry without it"
            }
            Self::MalformedOption => {
                "the gateway rejected one of our options; this is a bug in natkit or the gateway"
            }
            Self::NetworkFailure => {
                "the gateway has no working internet connection or no external address yet; \
                 try again later"
            }
            Self::NoResources => {
                "the gateway has no free mappings or ports; remove unused mappings or try later"
            }
            Self::UnsupportedProtocol => "the gateway cannot map this transport protocol",
            Self::UserExceededQuota => {
                "this host has as many mappings as the gateway allows; remove unused ones"
            }
            Self::CannotProvideExternal => {
                "the gateway cannot give the external port or address we asked for; \
                 ask for any port instead"
            }
            Self::AddressMismatch => {
                "the gateway sees a different source address than we sent: there is another \
                 NAT between us and the gateway, so its mappings would not reach us"
            }
            Self::ExcessiveRemotePeers => "the gateway cannot filter that many remote peers",
            Self::Unknown(_) => {
                "the gateway answered with a result code this version does not know"
            }
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PCP {} ({}): {}",
            self.name(),
            self.to_u8(),
            self.advice()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_names() {
        for v in 0..=255u8 {
            let c = ResultCode::from_u8(v);
            assert_eq!(c.to_u8(), v);
            assert!(!c.advice().is_empty());
            assert_eq!(matches!(c, ResultCode::Unknown(_)), v > 13);
        }
        assert_eq!(ResultCode::from_u8(10).name(), "USER_EX_QUOTA");
        assert_eq!(ResultCode::from_u8(13), ResultCode::ExcessiveRemotePeers);
        assert!(ResultCode::NoResources.is_short_lifetime_error());
        assert!(!ResultCode::NotAuthorized.is_short_lifetime_error());
        assert!(
            ResultCode::AddressMismatch
                .to_string()
                .contains("ADDRESS_MISMATCH (12)")
        );
    }
}
