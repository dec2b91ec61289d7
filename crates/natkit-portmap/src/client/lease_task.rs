//! A mapping's lease, kept alive by a tokio task that drives the
//! [`LeaseScheduler`]; the [`MappingHandle`] owns the task.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{Client, udp, upnp};
use crate::error::Error;
use crate::gateway::{Mapping, Method, Protocol, is_global_ipv4};
use crate::lease::{Action, EpochVerdict, LeaseScheduler, RetryPolicy};
use crate::pcp;

/// What last happened to a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingEvent {
    /// The mapping was created.
    Created,
    /// The lease was renewed.
    Renewed,
    /// The mapping was made again after it was lost (gateway restart seen
    /// by its epoch, or the lease expired before a renewal got through).
    Recreated,
    /// A create or renew request failed; it is retried with backoff.
    Failed(String),
    /// The lease ran out without renewal; the mapping is gone for now.
    Expired,
    /// The mapping was deleted (handle dropped or removed).
    Removed,
}

impl MappingEvent {
    /// A short lowercase name (for logs and JSON).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Renewed => "renewed",
            Self::Recreated => "recreated",
            Self::Failed(_) => "failed",
            Self::Expired => "expired",
            Self::Removed => "removed",
        }
    }
}

/// The current state of a mapping, as the handle's watch channel carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingStatus {
    /// The mapping, while it exists.
    pub mapping: Option<Mapping>,
    /// Whether the external address is public. False behind double NAT or
    /// carrier-grade NAT (and in the NAT lab, whose internet is TEST-NET).
    pub external_is_global: bool,
    /// What happened last.
    pub event: MappingEvent,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Times the mapping was re-created after being lost.
    pub recreations: u64,
}

/// A port mapping kept alive in the background. Dropping the handle (or
/// [`MappingHandle::remove`]) deletes the mapping and ends the task. The
/// delete after a drop runs on the tokio runtime: if the runtime may shut
/// down right after, call `remove().await` instead, which waits for it.
#[derive(Debug)]
pub struct MappingHandle {
    status: watch::Receiver<MappingStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Option<Error>>>,
}

impl MappingHandle {
    /// The mapping as of now (`None` while it is lost and being re-created).
    pub fn mapping(&self) -> Option<Mapping> {
        self.status.borrow().mapping
    }

    /// The external address as of now.
    pub fn external(&self) -> Option<SocketAddrV4> {
        self.mapping().map(|m| m.external)
    }

    /// The full status as of now.
    pub fn status(&self) -> MappingStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of the mapping (external address,
    /// renewals, loss).
    pub fn watch(&self) -> watch::Receiver<MappingStatus> {
        self.status.clone()
    }

    /// Deletes the mapping on the gateway and waits for the task to end.
    pub async fn remove(mut self) -> Result<(), Error> {
        drop(self.stop.take());
        match self.task.take() {
            Some(t) => match t.await {
                Ok(None) => Ok(()),
                Ok(Some(e)) => Err(e),
                Err(e) => Err(Error::Io {
                    what: "the lease task ended abnormally",
                    source: std::io::Error::other(e.to_string()),
                }),
            },
            None => Ok(()),
        }
    }
}

impl Drop for MappingHandle {
    fn drop(&mut self) {
        // Closing the channel tells the task to delete the mapping and end.
        drop(self.stop.take());
    }
}

/// How one method talks to the gateway for one mapping.
enum Backend {
    NatPmp(UdpSocket),
    Pcp { sock: UdpSocket, nonce: pcp::Nonce },
    Upnp(Option<upnp::Igd>),
}

/// A grant: external address, lifetime, epoch.
type Grant = (SocketAddrV4, Duration, Option<u32>);

struct Driver {
    client: Client,
    method: Method,
    protocol: Protocol,
    internal: SocketAddrV4,
    backend: Backend,
}

impl Driver {
    fn gateway(&self) -> Ipv4Addr {
        self.client.gateway
    }

    /// Asks for the mapping with `port` as the preferred external port, for
    /// `lifetime` (zero deletes).
    async fn request(&mut self, port: u16, lifetime: Duration) -> Result<Grant, Error> {
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let wait = self.client.config.request_timeout;
        let gw = self.gateway();
        match &mut self.backend {
            Backend::NatPmp(sock) => {
                // RFC 6886 §3.4: a delete suggests external port 0.
                let port = if secs == 0 { 0 } else { port };
                let g = udp::natpmp_map(
                    sock,
                    gw,
                    self.protocol,
                    self.internal.port(),
                    port,
                    secs,
                    wait,
                )
                .await?;
                Ok((g.external, secs_to(g.lifetime_secs), Some(g.epoch_secs)))
            }
            Backend::Pcp { sock, nonce } => {
                let suggested = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
                let req =
                    pcp::Request::map(*nonce, self.protocol, self.internal, Some(suggested), secs);
                let g = udp::pcp_map(sock, gw, &req, wait).await?;
                Ok((g.external, secs_to(g.lifetime_secs), Some(g.epoch_secs)))
            }
            Backend::Upnp(igd_slot) => {
                let (protocol, internal) = (self.protocol, self.internal);
                let description = self.client.config.description.clone();
                let client = &self.client;
                upnp::within(gw, wait.saturating_mul(2), async {
                    if igd_slot.is_none() {
                        *igd_slot = Some(client.igd().await?);
                    }
                    let Some(igd) = igd_slot.as_ref() else {
                        return Err(Error::UpnpOther("no gateway".into()));
                    };
                    if secs == 0 {
                        upnp::remove(igd, protocol, port).await?;
                        return Ok((
                            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                            Duration::ZERO,
                            None,
                        ));
                    }
                    let ip = upnp::external_ip(igd).await?;
                    let (ext_port, granted) =
                        upnp::add(igd, protocol, internal, port, secs, &description).await?;
                    // A permanent lease (725 fallback) is still refreshed at
                    // our own lease's half-life: re-adding is harmless and
                    // brings the mapping back after a gateway restart.
                    let life = if granted == 0 {
                        lifetime
                    } else {
                        secs_to(granted)
                    };
                    Ok((SocketAddrV4::new(ip, ext_port), life, None))
                })
                .await
                .inspect_err(|_| *igd_slot = None)
            }
        }
    }
}

fn secs_to(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// Makes the first grant, then spawns the task that keeps it.
pub(super) async fn start(
    client: Client,
    method: Method,
    protocol: Protocol,
    internal_port: u16,
) -> Result<MappingHandle, Error> {
    let gw = client.gateway;
    if method == Method::NatPmp && client.internal_ip() != client.local_ip {
        return Err(Error::Unsupported {
            method,
            what: "map for another host (a NAT-PMP mapping always points to the sender)",
        });
    }
    let backend = match method {
        Method::NatPmp => Backend::NatPmp(udp::connect(gw, client.server_port).await?),
        Method::Pcp => Backend::Pcp {
            sock: udp::connect(gw, client.server_port).await?,
            nonce: pcp::Nonce::random().map_err(|e| Error::Encode(e.to_string()))?,
        },
        Method::Upnp => Backend::Upnp(None),
    };
    let lease = client.config.lease;
    let internal = SocketAddrV4::new(client.internal_ip(), internal_port);
    let mut driver = Driver {
        client,
        method,
        protocol,
        internal,
        backend,
    };
    let mut sched = LeaseScheduler::new(
        std::time::Instant::now(),
        method.epoch_rule(),
        RetryPolicy::default(),
    );
    let _ = sched.poll(std::time::Instant::now());
    let (external, lifetime, epoch) = driver.request(internal_port, lease).await?;
    sched.on_granted(std::time::Instant::now(), lifetime, epoch);
    let mapping = Mapping {
        method,
        protocol,
        internal,
        external,
        lifetime,
    };
    tracing::info!(%method, %internal, %external, "port mapped for {}s", lifetime.as_secs());
    let (tx, rx) = watch::channel(MappingStatus {
        mapping: Some(mapping),
        external_is_global: is_global_ipv4(*external.ip()),
        event: MappingEvent::Created,
        renewals: 0,
        recreations: 0,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(driver, sched, tx, stop_rx));
    Ok(MappingHandle {
        status: rx,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// The lease loop: sleeps until the scheduler's deadline, creates, renews or
/// notes expiry; on stop, deletes the mapping.
async fn run(
    mut driver: Driver,
    mut sched: LeaseScheduler,
    tx: watch::Sender<MappingStatus>,
    mut stop: oneshot::Receiver<()>,
) -> Option<Error> {
    let lease = driver.client.config.lease;
    let mut last = tx.borrow().mapping;
    let mut lost = false;
    loop {
        let deadline = sched
            .next_deadline()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + lease);
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let action = sched.poll(std::time::Instant::now());
        match action {
            Some(Action::Create | Action::Renew) => {
                let port = last.map_or(driver.internal.port(), |m| m.external.port());
                let result = tokio::select! {
                    r = driver.request(port, lease) => r,
                    _ = &mut stop => break,
                };
                let now = std::time::Instant::now();
                match result {
                    Ok((external, lifetime, epoch)) => {
                        let verdict = sched.on_granted(now, lifetime, epoch);
                        let mapping = Mapping {
                            method: driver.method,
                            protocol: driver.protocol,
                            internal: driver.internal,
                            external,
                            lifetime,
                        };
                        let recreated = lost
                            || action == Some(Action::Create)
                            || verdict == Some(EpochVerdict::Restarted);
                        if recreated {
                            tracing::info!(method = %driver.method, %external, "mapping re-created (gateway restarted or lease lost)");
                        } else {
                            tracing::debug!(method = %driver.method, %external, "lease renewed");
                        }
                        lost = false;
                        last = Some(mapping);
                        tx.send_modify(|s| {
                            s.mapping = Some(mapping);
                            s.external_is_global = is_global_ipv4(*external.ip());
                            if recreated {
                                s.recreations += 1;
                                s.event = MappingEvent::Recreated;
                            } else {
                                s.renewals += 1;
                                s.event = MappingEvent::Renewed;
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(method = %driver.method, "lease request failed: {e}");
                        sched.on_failure(now, None);
                        tx.send_modify(|s| s.event = MappingEvent::Failed(e.to_string()));
                    }
                }
            }
            Some(Action::Expired) => {
                tracing::warn!(method = %driver.method, "mapping expired without renewal");
                lost = true;
                tx.send_modify(|s| {
                    s.mapping = None;
                    s.event = MappingEvent::Expired;
                });
            }
            None => {}
        }
    }
    let mut err = None;
    if sched.stop().is_some()
        && let Some(m) = last
        && let Err(e) = driver.request(m.external.port(), Duration::ZERO).await
    {
        tracing::warn!(method = %driver.method, "could not delete the mapping: {e}");
        err = Some(e);
    }
    tx.send_modify(|s| {
        s.mapping = None;
        s.event = MappingEvent::Removed;
    });
    err
}

#[cfg(test)]
mod tests {
    //! The lease task against a fake NAT-PMP gateway on loopback: renewal at
    //! half-life, a gateway "reboot" (epoch back to 0) seen as a re-creation,
    //! and the delete sent when the handle is dropped.

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::natpmp::{Request, Response, ResultCode};

    /// Granted lifetime: renewals come every second.
    const LIFETIME_SECS: u32 = 2;
    const WAIT: Duration = Duration::from_secs(5);

    #[derive(Default)]
    struct Fake {
        /// Epoch offset; set to "reboot" the gateway.
        rebooted_at: Option<tokio::time::Instant>,
        /// Every map request seen: (internal port, lifetime asked).
        maps: Vec<(u16, u32)>,
    }

    async fn fake_gateway() -> (u16, Arc<Mutex<Fake>>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Fake::default()));
        let st = Arc::clone(&state);
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Request::parse(&buf[..n]) else {
                    continue;
                };
                let resp = {
                    let mut st = st.lock().unwrap();
                    let epoch_secs = match st.rebooted_at {
                        Some(t) => t.elapsed().as_secs() as u32,
                        None => 1000 + start.elapsed().as_secs() as u32,
                    };
                    match req {
                        Request::ExternalAddress => Response::ExternalAddress {
                            result: ResultCode::Success,
                            epoch_secs,
                            address: Ipv4Addr::new(198, 51, 100, 1),
                        },
                        Request::Map {
                            protocol,
                            internal_port,
                            suggested_external_port,
                            lifetime_secs,
                        } => {
                            st.maps.push((internal_port, lifetime_secs));
                            Response::Map {
                                protocol,
                                result: ResultCode::Success,
                                epoch_secs,
                                internal_port,
                                external_port: suggested_external_port,
                                lifetime_secs: lifetime_secs.min(LIFETIME_SECS),
                            }
                        }
                    }
                };
                let _ = sock.send_to(&resp.emit(), from).await;
            }
        });
        (port, state)
    }

    /// Waits for a status that satisfies `want` (counters, not events: the
    /// watch channel keeps only the latest value, so events can coalesce).
    async fn wait_status(
        rx: &mut watch::Receiver<MappingStatus>,
        want: impl Fn(&MappingStatus) -> bool,
    ) -> MappingStatus {
        tokio::time::timeout(WAIT, async {
            loop {
                rx.changed().await.expect("task alive");
                let s = rx.borrow_and_update().clone();
                if want(&s) {
                    return s;
                }
            }
        })
        .await
        .expect("event in time")
    }

    #[tokio::test]
    async fn renews_recreates_after_reboot_and_deletes_on_drop() {
        let (port, fake) = fake_gateway().await;
        let config = super::super::Config {
            methods: vec![Method::NatPmp],
            lease: Duration::from_secs(60),
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let client = Client::for_test(config, Ipv4Addr::LOCALHOST, port);
        let handle = client.map(Protocol::Udp, 4000).await.unwrap();
        let m = handle.mapping().unwrap();
        assert_eq!(m.external, "198.51.100.1:4000".parse().unwrap());
        assert_eq!(m.lifetime, Duration::from_secs(LIFETIME_SECS.into()));
        assert!(!handle.status().external_is_global);

        let mut rx = handle.watch();
        wait_status(&mut rx, |s| s.renewals >= 1).await;

        fake.lock().unwrap().rebooted_at = Some(tokio::time::Instant::now());
        let s = wait_status(&mut rx, |s| s.recreations >= 1).await;
        assert_eq!(s.mapping.map(|m| m.external.port()), Some(4000));

        drop(handle);
        tokio::time::timeout(WAIT, async {
            while !fake.lock().unwrap().maps.contains(&(4000, 0)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the mapping is deleted when the handle is dropped");
        let maps = fake.lock().unwrap().maps.clone();
        assert!(maps.iter().all(|&(p, _)| p == 4000), "{maps:?}");
        assert_eq!(
            maps.first(),
            Some(&(4000, 60)),
            "asks for the configured lease"
        );
    }
}
