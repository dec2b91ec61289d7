//! NAT-PMP and PCP exchanges over UDP to gateway:5351, with this crate's own
//! codecs: retransmission, matching of responses to requests (anything that
//! does not parse or does not answer our request is dropped) and an overall
//! timeout, so that a silent or babbling gateway never blocks us.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

use crate::error::Error;
use crate::gateway::{Method, Protocol};
use crate::{natpmp, pcp};

/// Largest datagram we read; PCP messages are at most 1100 bytes.
const RECV_BUFFER_BYTES: usize = 1500;

/// First retransmission interval. RFC 6886 says 250 ms, doubling; PCP's
/// 3 s initial timer (RFC 6887 §8.1.1) is far too slow for an interactive
/// probe on a LAN, so PCP follows the NAT-PMP schedule here too.
const FIRST_RETRANSMIT: Duration = natpmp::INITIAL_RETRANSMIT;

/// A socket connected to the gateway's NAT-PMP/PCP port (5351).
pub(crate) async fn connect(gateway: Ipv4Addr, port: u16) -> Result<UdpSocket, Error> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(Error::io("binding a UDP socket"))?;
    sock.connect(SocketAddrV4::new(gateway, port))
        .await
        .map_err(Error::io("connecting a UDP socket to the gateway"))?;
    Ok(sock)
}

/// The local IPv4 address the OS would use to reach `gateway` (no packet is sent).
pub(crate) async fn local_ip_towards(gateway: Ipv4Addr) -> Result<Ipv4Addr, Error> {
    let sock = connect(gateway, natpmp::SERVER_PORT).await?;
    match sock
        .local_addr()
        .map_err(Error::io("reading the local address"))?
    {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        std::net::SocketAddr::V6(a) => Err(Error::NotIpv4(a.ip().to_string())),
    }
}

/// Sends `packet` with retransmissions until `accept` returns a value for a
/// received datagram or `wait` passes.
async fn exchange<T>(
    sock: &UdpSocket,
    method: Method,
    gateway: Ipv4Addr,
    packet: &[u8],
    wait: Duration,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, Error> {
    let deadline = Instant::now() + wait;
    let mut interval = FIRST_RETRANSMIT;
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        // A send error (e.g. ICMP port unreachable from the last try) is not
        // fatal: the gateway may come up; the deadline bounds it all.
        if let Err(e) = sock.send(packet).await {
            tracing::debug!(%gateway, %method, "send failed: {e}");
        }
        let resend_at = (Instant::now() + interval).min(deadline);
        interval = interval.saturating_mul(2);
        loop {
            match timeout_at(resend_at, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    if let Some(v) = buf.get(..n).and_then(&mut accept) {
                        return Ok(v);
                    }
                    tracing::debug!(%gateway, %method, "dropped a datagram that does not answer us");
                }
                Ok(Err(e)) => {
                    // ECONNREFUSED: nothing listens on 5351 (yet). Wait for
                    // the retransmission instead of spinning.
                    tracing::debug!(%gateway, %method, "recv failed: {e}");
                    tokio::time::sleep_until(resend_at).await;
                    break;
                }
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                method,
                gateway,
                after: wait,
            });
        }
    }
}

/// What a NAT-PMP or PCP mapping request got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted {
    pub external: SocketAddrV4,
    pub lifetime_secs: u32,
    pub epoch_secs: u32,
}

/// NAT-PMP external address request; returns (address, epoch).
pub(crate) async fn natpmp_external(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    wait: Duration,
) -> Result<(Ipv4Addr, u32), Error> {
    let req = natpmp::Request::ExternalAddress;
    let resp = exchange(sock, Method::NatPmp, gateway, &req.emit(), wait, |b| {
        natpmp::Response::parse(b).ok().filter(|r| r.answers(&req))
    })
    .await?;
    match resp {
        natpmp::Response::ExternalAddress {
            result, address, ..
        } if result.is_success() => Ok((address, resp.epoch_secs())),
        other if !other.result().is_success() => Err(Error::NatPmp(other.result())),
        _ => Err(Error::NatPmp(natpmp::ResultCode::Unknown(u16::MAX))),
    }
}

/// NAT-PMP map (or, with lifetime 0, delete). The external address comes
/// from a separate external-address request.
pub(crate) async fn natpmp_map(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    protocol: Protocol,
    internal_port: u16,
    suggested_port: u16,
    lifetime_secs: u32,
    wait: Duration,
) -> Result<Granted, Error> {
    let req = natpmp::Request::Map {
        protocol,
        internal_port,
        suggested_external_port: suggested_port,
        lifetime_secs,
    };
    let resp = exchange(sock, Method::NatPmp, gateway, &req.emit(), wait, |b| {
        natpmp::Response::parse(b).ok().filter(|r| r.answers(&req))
    })
    .await?;
    if !resp.result().is_success() {
        return Err(Error::NatPmp(resp.result()));
    }
    let natpmp::Response::Map {
        external_port,
        lifetime_secs,
        epoch_secs,
        ..
    } = resp
    else {
        return Err(Error::NatPmp(natpmp::ResultCode::Unknown(u16::MAX)));
    };
    if lifetime_secs == 0 {
        return Ok(Granted {
            external: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, external_port),
            lifetime_secs,
            epoch_secs,
        });
    }
    let (ip, _) = natpmp_external(sock, gateway, wait).await?;
    Ok(Granted {
        external: SocketAddrV4::new(ip, external_port),
        lifetime_secs,
        epoch_secs,
    })
}

/// A PCP exchange: sends `req`, returns the matching response (success or
/// error result) or a timeout.
pub(crate) async fn pcp_exchange(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    req: &pcp::Request,
    wait: Duration,
) -> Result<pcp::Response, Error> {
    let bytes = req.emit().map_err(|e| Error::Encode(e.to_string()))?;
    exchange(sock, Method::Pcp, gateway, &bytes, wait, |b| {
        pcp::Response::parse(b)
            .ok()
            .filter(|r| r.check_answers(req).is_ok())
    })
    .await
}

/// PCP ANNOUNCE: is there a PCP server? Returns its epoch.
pub(crate) async fn pcp_announce(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    wait: Duration,
) -> Result<u32, Error> {
    let resp = pcp_exchange(sock, gateway, &pcp::Request::announce(client), wait).await?;
    if resp.result.is_success() {
        Ok(resp.epoch_secs)
    } else {
        Err(Error::Pcp(resp.result))
    }
}

/// PCP MAP (or, with lifetime 0, delete) with the request built by the caller
/// (the nonce must stay the same over a mapping's life).
pub(crate) async fn pcp_map(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    req: &pcp::Request,
    wait: Duration,
) -> Result<Granted, Error> {
    let resp = pcp_exchange(sock, gateway, req, wait).await?;
    if !resp.result.is_success() {
        return Err(Error::Pcp(resp.result));
    }
    let external = resp
        .op
        .map()
        .and_then(|m| m.external_v4())
        .ok_or_else(|| Error::NotIpv4("(PCP MAP without an IPv4 address)".into()))?;
    Ok(Granted {
        external,
        lifetime_secs: resp.lifetime_secs,
        epoch_secs: resp.epoch_secs,
    })
}

#[cfg(test)]
mod tests {
    //! A fake gateway on loopback that answers garbage, stale or error
    //! responses: the exchanges must drop what does not answer them, turn
    //! error results into typed errors and always end by the deadline.

    use super::*;

    const WAIT: Duration = Duration::from_millis(400);

    /// A fake gateway that answers every request with `answer(request)`
    /// (several datagrams each), and a client socket connected to it.
    async fn fake(
        answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (UdpSocket, tokio::task::JoinHandle<()>) {
        let gw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = gw.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = gw.recv_from(&mut buf).await {
                for d in answer(&buf[..n]) {
                    let _ = gw.send_to(&d, from).await;
                }
            }
        });
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(addr).await.unwrap();
        (sock, task)
    }

    fn garbage() -> Vec<Vec<u8>> {
        let wrong_op = natpmp::Response::Short {
            request_opcode: 2,
            result: natpmp::ResultCode::Success,
            epoch_secs: 1,
        };
        vec![
            vec![],
            vec![0xff; 3],
            vec![2, 0x81, 0, 0],
            (0..=255).collect(),
            wrong_op.emit(),
            natpmp::Request::ExternalAddress.emit(),
        ]
    }

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A PCP MAP request for TCP port 5000 on loopback.
    fn map_request() -> pcp::Request {
        pcp::Request::map(
            pcp::Nonce([7; 12]),
            Protocol::Tcp,
            SocketAddrV4::new(LO, 5000),
            None,
            60,
        )
    }

    #[tokio::test]
    async fn garbage_is_dropped_and_the_wait_ends() {
        let (sock, _t) = fake(|_| garbage()).await;
        let t0 = Instant::now();
        let e = natpmp_external(&sock, LO, WAIT).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        let req = map_request();
        let e = pcp_map(&sock, LO, &req, WAIT).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(t0.elapsed() < WAIT * 2 + Duration::from_millis(300));
    }

    #[tokio::test]
    async fn answer_after_garbage_is_taken() {
        let (sock, _t) = fake(|req| {
            let mut out = garbage();
            if natpmp::Request::parse(req).is_ok() {
                out.push(
                    natpmp::Response::ExternalAddress {
                        result: natpmp::ResultCode::Success,
                        epoch_secs: 9,
                        address: Ipv4Addr::new(198, 51, 100, 7),
                    }
                    .emit(),
                );
            }
            out
        })
        .await;
        let (ip, epoch) = natpmp_external(&sock, LO, WAIT).await.unwrap();
        assert_eq!((ip, epoch), (Ipv4Addr::new(198, 51, 100, 7), 9));
    }

    #[tokio::test]
    async fn error_results_are_typed() {
        let (sock, _t) = fake(|req| {
            if let Ok(r) = pcp::Request::parse(req) {
                // A stale answer (other nonce) first, then the real refusal.
                let mut stale = r.clone();
                if let pcp::OpData::Map(m) = &mut stale.op {
                    m.nonce = pcp::Nonce([1; 12]);
                }
                let resp = |op: pcp::OpData| pcp::Response {
                    result: pcp::ResultCode::NotAuthorized,
                    lifetime_secs: 30,
                    epoch_secs: 5,
                    op,
                    options: Vec::new(),
                };
                return vec![resp(stale.op).emit().unwrap(), resp(r.op).emit().unwrap()];
            }
            let Ok(natpmp::Request::Map {
                protocol,
                internal_port,
                ..
            }) = natpmp::Request::parse(req)
            else {
                return vec![];
            };
            vec![
                natpmp::Response::Map {
                    protocol,
                    result: natpmp::ResultCode::NotAuthorized,
                    epoch_secs: 5,
                    internal_port,
                    external_port: 0,
                    lifetime_secs: 0,
                }
                .emit(),
            ]
        })
        .await;
        let e = natpmp_map(&sock, LO, Protocol::Udp, 5000, 5000, 60, WAIT)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::NatPmp(natpmp::ResultCode::NotAuthorized)),
            "{e}"
        );
        let req = map_request();
        let e = pcp_map(&sock, LO, &req, WAIT).await.unwrap_err();
        assert!(
            matches!(e, Error::Pcp(pcp::ResultCode::NotAuthorized)),
            "{e}"
        );
        assert!(e.to_string().contains("NOT_AUTHORIZED"), "{e}");
    }

    #[tokio::test]
    async fn silent_gateway_times_out() {
        // Nothing listens: sends draw ICMP port unreachable; the wait still ends on time.
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect((LO, port)).await.unwrap();
        let t0 = Instant::now();
        let e = natpmp_external(&sock, LO, WAIT).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(t0.elapsed() >= WAIT && t0.elapsed() < WAIT * 3);
    }
}
