//! The node's own port mappings: in the background, the node asks its
//! gateway (PCP, NAT-PMP or UPnP, through `natkit-portmap`) to forward its
//! port, TCP and UDP, keeps the leases alive and removes them at shutdown.
//! Start-up never waits for it. The TCP mapping's external address goes in
//! the UNL (as a `upnp`/`nat-pmp`/`pcp` address), and when the gateway's
//! external IP is the one the DHT sees us at (no other NAT beyond it), the
//! UNL says the node is reachable.
//!
//! When the gateway maps nothing (no UPnP/NAT-PMP/PCP, or it refuses), the
//! node asks again every [`PORTMAP_RETRY`]: a mapping that appears later
//! (the service switched on) lets a relayed connection upgrade to direct.
//!
//! Off when the node is bound to loopback (no gateway there) or by
//! [`NodeBuilder::port_mapping`](super::NodeBuilder::port_mapping).

use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::Duration;

use natkit_portmap::gateway::{Mapping, Method, Protocol};
use natkit_portmap::{Client, Config, MappingHandle};
use natkit_unl::AddrSource;
use tokio_util::sync::CancellationToken;

use super::{Inner, Node};

/// How often a node whose gateway maps no port asks again.
pub const PORTMAP_RETRY: Duration = Duration::from_secs(10);

/// How long removing a mapping at shutdown may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The UNL source of a mapping method.
pub(crate) fn source(method: Method) -> AddrSource {
    match method {
        Method::Pcp => AddrSource::Pcp,
        Method::NatPmp => AddrSource::NatPmp,
        Method::Upnp => AddrSource::Upnp,
    }
}

/// Maps `port` (TCP, then UDP) and follows the TCP mapping until `cancel`;
/// then removes both.
pub(crate) async fn map_loop(
    node: Weak<Inner>,
    bind_ip: IpAddr,
    port: u16,
    cancel: CancellationToken,
) {
    let config = Config {
        internal_ip: match bind_ip {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        },
        ..Config::default()
    };
    // A gateway that maps nothing now may later (a router whose UPnP is switched on, a
    // mapping service restarted): try again every PORTMAP_RETRY.
    let mut first = true;
    let (client, tcp) = loop {
        let attempt = async {
            let client = Client::new(config.clone())
                .await
                .map_err(|e| format!("no port mapping: {e}"))?;
            match client.map(Protocol::Tcp, port).await {
                Ok(h) => Ok((client, h)),
                Err(e) => Err(format!(
                    "the gateway {} maps no port for us: {e}",
                    client.gateway()
                )),
            }
        };
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(x) => break x,
            Err(e) if first => {
                tracing::info!(error = %e, retry_s = PORTMAP_RETRY.as_secs(), "no port mapping; will retry")
            }
            Err(e) => tracing::debug!(error = %e, "no port mapping yet"),
        }
        first = false;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PORTMAP_RETRY) => {}
        }
    };
    let mut handles: Vec<MappingHandle> = Vec::new();
    let mut watch = tcp.watch();
    set(&node, tcp.mapping()).await;
    tracing::info!(mapping = ?tcp.mapping(), "port mapped (TCP)");
    handles.push(tcp);
    // UDP too, for the DHT socket (same port number): best effort.
    tokio::select! {
        () = cancel.cancelled() => {}
        m = client.map(Protocol::Udp, port) => match m {
            Ok(h) => {
                tracing::info!(mapping = ?h.mapping(), "port mapped (UDP)");
                handles.push(h);
            }
            Err(e) => tracing::info!(error = %e, "no UDP port mapping"),
        },
    }
    while !cancel.is_cancelled() {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = watch.changed() => {
                if changed.is_err() {
                    break;
                }
                let status = watch.borrow_and_update().clone();
                tracing::info!(event = status.event.name(), mapping = ?status.mapping, "port mapping changed");
                set(&node, status.mapping).await;
            }
        }
    }
    if let Some(inner) = node.upgrade() {
        *inner.mapping.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    for h in handles {
        match tokio::time::timeout(REMOVE_TIMEOUT, h.remove()).await {
            Ok(Ok(())) => tracing::info!("port mapping removed"),
            Ok(Err(e)) => tracing::info!(error = %e, "could not remove a port mapping"),
            Err(_) => tracing::info!("removing a port mapping timed out"),
        }
    }
}

/// Records the mapping and republishes the UNL at once if it changed.
async fn set(node: &Weak<Inner>, mapping: Option<Mapping>) {
    let Some(inner) = node.upgrade() else { return };
    *inner.mapping.lock().unwrap_or_else(|e| e.into_inner()) = mapping;
    if let Err(e) = (Node { inner }).refresh(false).await {
        tracing::info!(error = %e, "could not publish the UNL; will retry");
    }
}

/// The UNL address of a TCP mapping.
pub(crate) fn external(m: &Mapping) -> (AddrSource, SocketAddr) {
    (source(m.method), SocketAddr::V4(m.external))
}
