//! UPnP IGD through `igd-next` (tokio API), every call wrapped in our own
//! timeout. Discovery sends the SSDP search to the gateway's own address
//! (unicast, port 1900) rather than to the multicast group, which a host
//! firewall or a missing multicast route can swallow; with a description URL
//! it skips SSDP and reads the device description itself.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{
    AddAnyPortError, AddPortError, GetExternalIpError, GetGenericPortMappingEntryError,
    PortMappingProtocol, RemovePortError, RequestError, SearchOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;
use crate::gateway::{Method, Protocol};

/// The largest device description we read.
const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;

/// The SSDP port.
const SSDP_PORT: u16 = 1900;

/// A UPnP gateway ready for SOAP calls.
pub(crate) type Igd = Gateway<Tokio>;

/// Runs `fut` with a deadline.
pub(crate) async fn within<T>(
    gateway: Ipv4Addr,
    wait: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(wait, fut)
        .await
        .unwrap_or(Err(Error::Timeout {
            method: Method::Upnp,
            gateway,
            after: wait,
        }))
}

/// Finds the IGD: from `url` if given, else by a unicast SSDP search to the gateway.
pub(crate) async fn discover(
    gateway: Ipv4Addr,
    url: Option<&str>,
    wait: Duration,
) -> Result<Igd, Error> {
    within(gateway, wait, async {
        if let Some(url) = url {
            return from_description_url(url).await;
        }
        let mut opts = SearchOptions::default();
        opts.broadcast_address = SocketAddr::from((gateway, SSDP_PORT));
        opts.timeout = Some(wait);
        opts.single_search_timeout = Some(wait);
        igd_next::aio::tokio::search_gateway(opts)
            .await
            .map_err(|e| Error::UpnpOther(format!("no IGD found at {gateway}: {e}")))
    })
    .await
}

fn igd_proto(p: Protocol) -> PortMappingProtocol {
    match p {
        Protocol::Tcp => PortMappingProtocol::TCP,
        Protocol::Udp => PortMappingProtocol::UDP,
    }
}

/// A UPnP error from an igd-next request error.
fn request_error(e: RequestError) -> Error {
    match e {
        RequestError::ErrorCode(code, message) => Error::Upnp { code, message },
        other => Error::UpnpOther(other.to_string()),
    }
}

fn add_port_error(e: AddPortError) -> Error {
    let (code, message) = match e {
        AddPortError::ActionNotAuthorized => (606, "ActionNotAuthorized"),
        AddPortError::PortInUse => (718, "ConflictInMappingEntry"),
        AddPortError::SamePortValuesRequired => (724, "SamePortValuesRequired"),
        AddPortError::OnlyPermanentLeasesSupported => (725, "OnlyPermanentLeasesSupported"),
        AddPortError::DescriptionTooLong => (605, "StringArgumentTooLong"),
        AddPortError::RequestError(e) => return request_error(e),
        other => return Error::UpnpOther(other.to_string()),
    };
    Error::Upnp {
        code,
        message: message.into(),
    }
}

fn add_any_port_error(e: AddAnyPortError) -> Error {
    let (code, message) = match e {
        AddAnyPortError::ActionNotAuthorized => (606, "ActionNotAuthorized"),
        AddAnyPortError::NoPortsAvailable | AddAnyPortError::ExternalPortInUse => {
            (718, "ConflictInMappingEntry")
        }
        AddAnyPortError::OnlyPermanentLeasesSupported => (725, "OnlyPermanentLeasesSupported"),
        AddAnyPortError::DescriptionTooLong => (605, "StringArgumentTooLong"),
        AddAnyPortError::RequestError(e) => return request_error(e),
        other => return Error::UpnpOther(other.to_string()),
    };
    Error::Upnp {
        code,
        message: message.into(),
    }
}

/// The gateway's external IPv4 address.
pub(crate) async fn external_ip(igd: &Igd) -> Result<Ipv4Addr, Error> {
    match igd.get_external_ip().await {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(ip)) => Err(Error::NotIpv4(ip.to_string())),
        Err(GetExternalIpError::RequestError(e)) => Err(request_error(e)),
        Err(GetExternalIpError::ActionNotAuthorized) => Err(Error::Upnp {
            code: 606,
            message: "ActionNotAuthorized".into(),
        }),
    }
}

/// Maps `internal` on `external_port` (asked first), else on any port. A
/// gateway that only takes permanent leases (725) gets lease 0.
/// Returns (external port, lease granted in seconds, 0 = permanent).
pub(crate) async fn add(
    igd: &Igd,
    protocol: Protocol,
    internal: SocketAddrV4,
    external_port: u16,
    lease_secs: u32,
    description: &str,
) -> Result<(u16, u32), Error> {
    let proto = igd_proto(protocol);
    let local = SocketAddr::V4(internal);
    let mut lease = lease_secs;
    let first = loop {
        match igd
            .add_port(proto, external_port, local, lease, description)
            .await
            .map_err(add_port_error)
        {
            Ok(()) => return Ok((external_port, lease)),
            Err(Error::Upnp { code: 725, .. }) if lease != 0 => lease = 0,
            Err(e) => break e,
        }
    };
    // 718: the port is taken (or refused, in secure mode); try any port.
    if !matches!(first, Error::Upnp { code: 718, .. }) {
        return Err(first);
    }
    match igd.add_any_port(proto, local, lease, description).await {
        Ok(port) => Ok((port, lease)),
        Err(AddAnyPortError::OnlyPermanentLeasesSupported) if lease != 0 => igd
            .add_any_port(proto, local, 0, description)
            .await
            .map(|p| (p, 0))
            .map_err(add_any_port_error),
        // The first error says more (e.g. secure mode refusing another host).
        Err(_) => Err(first),
    }
}

/// Deletes the mapping of `external_port`.
pub(crate) async fn remove(igd: &Igd, protocol: Protocol, external_port: u16) -> Result<(), Error> {
    igd.remove_port(igd_proto(protocol), external_port)
        .await
        .map_err(|e| match e {
            RemovePortError::NoSuchPortMapping => Error::Upnp {
                code: 714,
                message: "NoSuchEntryInArray".into(),
            },
            RemovePortError::ActionNotAuthorized => Error::Upnp {
                code: 606,
                message: "ActionNotAuthorized".into(),
            },
            RemovePortError::RequestError(e) => request_error(e),
        })
}

/// One entry of the gateway's mapping table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpnpEntry {
    /// The external port.
    pub external_port: u16,
    /// "TCP" or "UDP".
    pub protocol: String,
    /// The LAN host it forwards to.
    pub internal_client: String,
    /// The LAN port.
    pub internal_port: u16,
    /// The description the mapping was made with.
    pub description: String,
    /// Remaining lease in seconds (0: permanent).
    pub lease_secs: u32,
    /// Whether it is enabled.
    pub enabled: bool,
}

/// The mapping table, by GetGenericPortMappingEntry until the gateway says
/// the index is out of range. At most `MAX_LIST_ENTRIES`.
pub(crate) async fn list(igd: &Igd) -> Result<Vec<UpnpEntry>, Error> {
    /// A bound on the listing, in case a gateway never says "out of range".
    const MAX_LIST_ENTRIES: u32 = 1024;
    let mut out = Vec::new();
    for i in 0..MAX_LIST_ENTRIES {
        match igd.get_generic_port_mapping_entry(i).await {
            Ok(e) => out.push(UpnpEntry {
                external_port: e.external_port,
                protocol: e.protocol.to_string(),
                internal_client: e.internal_client,
                internal_port: e.internal_port,
                description: e.port_mapping_description,
                lease_secs: e.lease_duration,
                enabled: e.enabled,
            }),
            Err(GetGenericPortMappingEntryError::SpecifiedArrayIndexInvalid) => break,
            Err(GetGenericPortMappingEntryError::ActionNotAuthorized) => {
                return Err(Error::Upnp {
                    code: 606,
                    message: "ActionNotAuthorized".into(),
                });
            }
            // miniupnpd answers 713 for an index past the end.
            Err(GetGenericPortMappingEntryError::RequestError(RequestError::ErrorCode(713, _))) => {
                break;
            }
            Err(GetGenericPortMappingEntryError::RequestError(e)) => return Err(request_error(e)),
        }
    }
    Ok(out)
}

/// Builds the gateway from its device description URL, without SSDP. The
/// control schema is the standard argument list of WANIPConnection (igd-next
/// would read it from the SCPD; these are the spec's names and order).
async fn from_description_url(url: &str) -> Result<Igd, Error> {
    let bad = |why: &str| Error::UpnpOther(format!("description URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: SocketAddr = hostport
        .parse()
        .or_else(|_| hostport.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 80)))
        .map_err(|_| bad("the host must be IP:PORT"))?;
    let body = http_get(addr, hostport, path)
        .await
        .map_err(|e| bad(&e.to_string()))?;
    let (service_type, control_url) = find_wan_service(&body)
        .ok_or_else(|| bad("no WANIPConnection or WANPPPConnection service"))?;
    Ok(Gateway {
        addr,
        root_url: path.to_string(),
        control_url,
        control_schema_url: String::new(),
        control_schema: standard_schema(),
        service_type,
        provider: Tokio,
    })
}

/// A plain HTTP/1.0 GET; returns the body.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    (&mut s)
        .take(MAX_DESCRIPTION_BYTES as u64)
        .read_to_end(&mut buf)
        .await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        let status = head.lines().next().unwrap_or("").to_string();
        return Err(std::io::Error::other(format!("HTTP status {status:?}")));
    }
    Ok(body.to_string())
}

/// The (serviceType, controlURL) of the first WAN connection service in a
/// device description.
fn find_wan_service(xml: &str) -> Option<(String, String)> {
    fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
        let open = format!("<{name}>");
        let start = s.find(&open)? + open.len();
        let end = s.get(start..)?.find(&format!("</{name}>"))? + start;
        s.get(start..end).map(str::trim)
    }
    xml.split("<service>").skip(1).find_map(|svc| {
        let svc = svc.split("</service>").next()?;
        let ty = tag(svc, "serviceType")?;
        if !(ty.contains(":WANIPConnection:") || ty.contains(":WANPPPConnection:")) {
            return None;
        }
        Some((ty.to_string(), tag(svc, "controlURL")?.to_string()))
    })
}

/// The argument lists of WANIPConnection:1 actions igd-next formats from the schema.
fn standard_schema() -> HashMap<String, Vec<String>> {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let add = args(&[
        "NewRemoteHost",
        "NewExternalPort",
        "NewProtocol",
        "NewInternalPort",
        "NewInternalClient",
        "NewEnabled",
        "NewPortMappingDescription",
        "NewLeaseDuration",
    ]);
    HashMap::from([
        ("AddPortMapping".to_string(), add),
        (
            "DeletePortMapping".to_string(),
            args(&["NewRemoteHost", "NewExternalPort", "NewProtocol"]),
        ),
        ("GetExternalIPAddress".to_string(), Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wan_service() {
        let xml = "<root><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>\
            <controlURL>/ctl/L3F</controlURL></service><device><service>\
            <serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>\
            <controlURL> /ctl/IPConn </controlURL></service></device></root>";
        assert_eq!(
            find_wan_service(xml),
            Some((
                "urn:schemas-upnp-org:service:WANIPConnection:2".into(),
                "/ctl/IPConn".into()
            ))
        );
        assert_eq!(find_wan_service("<service><serviceType>"), None);
        assert_eq!(find_wan_service(""), None);
    }

    #[test]
    fn advice_for_common_codes() {
        for code in [402, 718, 725] {
            assert_ne!(
                crate::error::upnp_advice(code),
                crate::error::upnp_advice(1)
            );
        }
    }
}
