//! The tokio client: finds the gateway, probes PCP, NAT-PMP and UPnP in
//! parallel, maps a port with the best method and keeps the lease alive.
//!
//! Nothing is sent until a method is called: [`Client::new`] only reads the
//! routing table (netdev) and asks the OS for the local address towards the
//! gateway (a UDP `connect`, which sends no packet).

mod lease_task;
mod udp;
mod upnp;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::gateway::{Method, Protocol, is_global_ipv4};
use crate::{natpmp, pcp};

pub use lease_task::{MappingEvent, MappingHandle, MappingStatus};
pub use upnp::UpnpEntry;

/// Default lease: two hours, the lifetime RFC 6886 and RFC 6887 recommend
/// (and iroh's UPnP lease since it stopped asking for permanent ones).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(7200);

/// How long a probe waits for each method: 1 s (iroh uses 500 ms for PCP and
/// NAT-PMP and 1 s for UPnP; a LAN gateway answers in milliseconds).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one request (map, renew, delete) may take, retransmissions
/// included. UPnP SOAP calls are HTTP round trips on the LAN.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The description UPnP mappings are made with.
pub const DEFAULT_DESCRIPTION: &str = "natkit";

/// Client configuration. `Default` finds the gateway from the routing table
/// and allows every method.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// The gateway to talk to; `None` takes the default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The UPnP device description URL (skips SSDP discovery).
    pub upnp_url: Option<String>,
    /// The methods allowed, in any order (preference is always PCP, NAT-PMP, UPnP).
    pub methods: Vec<Method>,
    /// Per-method probe timeout.
    pub probe_timeout: Duration,
    /// Per-request timeout (map, renew, delete).
    pub request_timeout: Duration,
    /// The lease to ask for.
    pub lease: Duration,
    /// The description UPnP mappings carry.
    pub description: String,
    /// The LAN address to map to; `None` is our own address towards the
    /// gateway. (Gateways in secure mode refuse other hosts' addresses.)
    pub internal_ip: Option<Ipv4Addr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: None,
            upnp_url: None,
            methods: Method::BY_PREFERENCE.to_vec(),
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            lease: DEFAULT_LEASE,
            description: DEFAULT_DESCRIPTION.into(),
            internal_ip: None,
        }
    }
}

/// What a probe found out about one method.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodProbe {
    /// The method.
    pub method: Method,
    /// Whether the gateway speaks it.
    pub available: bool,
    /// The external address it reported, if the method tells (PCP does not
    /// without a mapping).
    pub external_ip: Option<Ipv4Addr>,
    /// Why it is not available (timeout, error result), if it is not.
    pub error: Option<String>,
    /// How long the probe took, in milliseconds.
    pub elapsed_ms: u64,
}

/// The result of [`Client::probe`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeReport {
    /// The gateway probed.
    pub gateway: Ipv4Addr,
    /// Our address towards it.
    pub local_ip: Ipv4Addr,
    /// One entry per method tried, most preferred first.
    pub methods: Vec<MethodProbe>,
    /// The external address, from the first method that reported one.
    pub external_ip: Option<Ipv4Addr>,
    /// Whether that address is public (false behind double or carrier NAT).
    pub external_is_global: Option<bool>,
}

impl ProbeReport {
    /// The most preferred method the gateway speaks.
    pub fn best(&self) -> Option<Method> {
        self.methods.iter().find(|m| m.available).map(|m| m.method)
    }
}

/// A port-mapping client for one gateway.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    gateway: Ipv4Addr,
    local_ip: Ipv4Addr,
    /// The NAT-PMP/PCP server port: 5351, except against a test's fake gateway.
    server_port: u16,
}

/// Serialises [`Method`] by its name.
impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Method::BY_PREFERENCE
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown method {s:?}")))
    }
}

impl Client {
    /// A client for the configured gateway, or the default route's.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let gateway = match config.gateway {
            Some(g) => g,
            None => default_gateway()?,
        };
        let local_ip = udp::local_ip_towards(gateway).await?;
        Ok(Self {
            config,
            gateway,
            local_ip,
            server_port: natpmp::SERVER_PORT,
        })
    }

    /// A client for a fake gateway on another port (tests only).
    #[cfg(test)]
    pub(crate) fn for_test(config: Config, gateway: Ipv4Addr, server_port: u16) -> Self {
        Self {
            config,
            gateway,
            local_ip: gateway,
            server_port,
        }
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Our address towards the gateway.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn allowed(&self, m: Method) -> bool {
        self.config.methods.contains(&m)
    }

    /// Probes one method (the future owns what it needs, so it can be spawned).
    fn probe_one(&self, method: Method) -> impl Future<Output = MethodProbe> + Send + 'static {
        let wait = self.config.probe_timeout;
        let (gw, me, port) = (self.gateway, self.local_ip, self.server_port);
        let url = self.config.upnp_url.clone();
        async move {
            let t0 = Instant::now();
            let r: Result<Option<Ipv4Addr>, Error> = match method {
                Method::Pcp => match udp::connect(gw, port).await {
                    Ok(sock) => udp::pcp_announce(&sock, gw, me, wait).await.map(|_| None),
                    Err(e) => Err(e),
                },
                Method::NatPmp => match udp::connect(gw, port).await {
                    Ok(sock) => udp::natpmp_external(&sock, gw, wait)
                        .await
                        .map(|(ip, _)| Some(ip)),
                    Err(e) => Err(e),
                },
                Method::Upnp => {
                    upnp::within(gw, wait, async {
                        let igd = upnp::discover(gw, url.as_deref(), wait).await?;
                        upnp::external_ip(&igd).await.map(Some)
                    })
                    .await
                }
            };
            MethodProbe {
                method,
                available: r.is_ok(),
                external_ip: r.as_ref().ok().copied().flatten(),
                error: r.err().map(|e| e.to_string()),
                elapsed_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        }
    }

    /// The allowed methods, most preferred first.
    fn allowed_methods(&self) -> Vec<Method> {
        Method::BY_PREFERENCE
            .into_iter()
            .filter(|m| self.allowed(*m))
            .collect()
    }

    /// Probes every allowed method in parallel, each with the probe timeout.
    pub async fn probe(&self) -> ProbeReport {
        let probes = self
            .allowed_methods()
            .into_iter()
            .map(|m| self.probe_one(m));
        let methods: Vec<MethodProbe> = futures::future::join_all(probes).await;
        let external_ip = methods.iter().find_map(|m| m.external_ip);
        ProbeReport {
            gateway: self.gateway,
            local_ip: self.local_ip,
            methods,
            external_ip,
            external_is_global: external_ip.map(is_global_ipv4),
        }
    }

    /// Maps `internal_port` (TCP or UDP), asking for the same external port
    /// first. With one allowed method it is used directly; with several, all
    /// are probed in parallel and the most preferred one that answers is used
    /// as soon as every more preferred probe has finished (a slow UPnP probe
    /// does not delay PCP), falling back to the next if the mapping request
    /// fails. The first grant has happened when this returns; a task owned by
    /// the handle renews it.
    pub async fn map(
        &self,
        protocol: Protocol,
        internal_port: u16,
    ) -> Result<MappingHandle, Error> {
        let methods = self.allowed_methods();
        if let [only] = methods[..] {
            return lease_task::start(self.clone(), only, protocol, internal_port).await;
        }
        // Methods are tried in preference order. PCP needs no separate probe:
        // its MAP request is the probe (a gateway without PCP answers it with
        // an error, or not at all, and then the probe timeout moves on). The
        // other probes run in the background, each starting as soon as every
        // more preferred method has failed, or after its stagger delay,
        // whichever comes first. A gateway that speaks the preferred protocol
        // has mapped before the next probe would start, and that probe is
        // aborted before it sends anything, instead of keeping a
        // single-threaded gateway (miniupnpd, which may even run a STUN query
        // to answer a NAT-PMP address request) busy while it should be
        // answering the preferred request.
        let (failed_tx, failed_rx) = tokio::sync::watch::channel(0usize);
        let probes: Vec<(Method, AbortOnDrop)> = methods
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                if *m == Method::Pcp {
                    return (*m, AbortOnDrop(None));
                }
                let probe = self.probe_one(*m);
                let delay = PROBE_STAGGER * rank as u32;
                let mut failed = failed_rx.clone();
                let task = tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = failed.wait_for(|n| *n >= rank) => {}
                    }
                    probe.await
                });
                (*m, AbortOnDrop(Some(task)))
            })
            .collect();
        let mut first_err = None;
        let mut tried = Vec::new();
        for (method, mut probe) in probes {
            let attempt = if method == Method::Pcp {
                let start = lease_task::start(self.clone(), method, protocol, internal_port);
                match tokio::time::timeout(self.config.probe_timeout, start).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Silence is "does not speak PCP", like a failed probe.
                        tried.push(format!("{method}: no answer"));
                        failed_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                }
            } else {
                let report = match probe.0.take() {
                    Some(task) => task.await.ok(),
                    None => None,
                };
                match report {
                    Some(r) if r.available => {
                        lease_task::start(self.clone(), method, protocol, internal_port).await
                    }
                    Some(r) => {
                        let why = r.error.as_deref().unwrap_or("no answer");
                        tried.push(format!("{method}: {why}"));
                        failed_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                    None => {
                        failed_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                }
            };
            match attempt {
                Ok(h) => return Ok(h),
                Err(e) => {
                    tracing::info!(%method, "mapping failed: {e}");
                    tried.push(format!("{method}: {e}"));
                    first_err.get_or_insert(e);
                    failed_tx.send_modify(|n| *n += 1);
                }
            }
        }
        Err(first_err.unwrap_or(Error::NoMethod {
            gateway: self.gateway,
            tried: if tried.is_empty() {
                "none allowed".into()
            } else {
                tried.join("; ")
            },
        }))
    }

    /// Removes a mapping made earlier (by this or another process) with
    /// `method`, or with `None` with every allowed method (the mapping's
    /// method may be unknown); returns the methods whose delete succeeded.
    /// NAT-PMP deletes by internal port and cannot tell whether a mapping
    /// existed; UPnP deletes by external port (taken equal to `port`) and
    /// says 714 if there was none; PCP deletes only with the nonce of the MAP
    /// that made the mapping, so gateways that check it (miniupnpd) refuse a
    /// delete from another process with NOT_AUTHORIZED.
    pub async fn remove(
        &self,
        protocol: Protocol,
        port: u16,
        method: Option<Method>,
    ) -> Result<Vec<Method>, Error> {
        let methods: Vec<Method> = match method {
            Some(m) => vec![m],
            None => Method::BY_PREFERENCE
                .into_iter()
                .filter(|m| self.allowed(*m))
                .collect(),
        };
        let mut done = Vec::new();
        let mut first_err = None;
        for m in methods {
            match self.remove_with(m, protocol, port).await {
                Ok(()) => done.push(m),
                Err(e) => {
                    tracing::info!(method = %m, "delete failed: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        if done.is_empty() {
            return Err(first_err.unwrap_or(Error::NoMethod {
                gateway: self.gateway,
                tried: "none allowed".into(),
            }));
        }
        Ok(done)
    }

    async fn remove_with(
        &self,
        method: Method,
        protocol: Protocol,
        port: u16,
    ) -> Result<(), Error> {
        let wait = self.config.request_timeout;
        match method {
            Method::NatPmp => {
                let sock = udp::connect(self.gateway, self.server_port).await?;
                udp::natpmp_map(&sock, self.gateway, protocol, port, 0, 0, wait)
                    .await
                    .map(|_| ())
            }
            Method::Pcp => {
                let sock = udp::connect(self.gateway, self.server_port).await?;
                let nonce = pcp::Nonce::random().map_err(|e| Error::Encode(e.to_string()))?;
                let req = pcp::Request::map(
                    nonce,
                    protocol,
                    SocketAddrV4::new(self.internal_ip(), port),
                    None,
                    0,
                );
                udp::pcp_map(&sock, self.gateway, &req, wait)
                    .await
                    .map(|_| ())
            }
            Method::Upnp => {
                upnp::within(self.gateway, wait, async {
                    let igd = self.igd().await?;
                    upnp::remove(&igd, protocol, port).await
                })
                .await
            }
        }
    }

    /// Lists the gateway's mappings (UPnP only: NAT-PMP and PCP have no way
    /// to list mappings).
    pub async fn list(&self) -> Result<Vec<UpnpEntry>, Error> {
        if !self.allowed(Method::Upnp) {
            return Err(Error::Unsupported {
                method: self.config.methods.first().copied().unwrap_or(Method::Pcp),
                what: "list mappings (only UPnP can)",
            });
        }
        let wait = self.config.request_timeout;
        upnp::within(self.gateway, wait.saturating_mul(4), async {
            let igd = self.igd().await?;
            upnp::list(&igd).await
        })
        .await
    }

    /// The LAN address mappings point to.
    pub(crate) fn internal_ip(&self) -> Ipv4Addr {
        self.config.internal_ip.unwrap_or(self.local_ip)
    }

    pub(crate) async fn igd(&self) -> Result<upnp::Igd, Error> {
        upnp::discover(
            self.gateway,
            self.config.upnp_url.as_deref(),
            self.config.probe_timeout.max(self.config.request_timeout),
        )
        .await
    }
}

/// Aborts a spawned probe that is no longer needed.
/// In automatic mapping, the delay between starting one method and the next
/// less preferred one, unless the preferred one fails sooner (see
/// [`Client::map`]). Long enough for a PCP or NAT-PMP exchange with a home
/// router (a few ms, plus the router's own rule update), short against the
/// probe timeout.
pub const PROBE_STAGGER: Duration = Duration::from_millis(100);

struct AbortOnDrop(Option<tokio::task::JoinHandle<MethodProbe>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// The default route's IPv4 gateway, from netdev.
fn default_gateway() -> Result<Ipv4Addr, Error> {
    let iface = netdev::get_default_interface().map_err(Error::NoGateway)?;
    iface
        .gateway
        .and_then(|g| g.ipv4.first().copied())
        .ok_or_else(|| Error::NoGateway(format!("interface {} has no IPv4 gateway", iface.name)))
}
