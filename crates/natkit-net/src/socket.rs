//! TCP sockets with port reuse.
//!
//! The listener and every outgoing connection are bound to the same local port
//! with `SO_REUSEADDR` and `SO_REUSEPORT`, so that the port a NAT maps for our
//! outgoing connections is the one we advertise, which TCP hole punching
//! (simultaneous open) depends on. When the 4-tuple is already in use the
//! kernel refuses the connect with `EADDRNOTAVAIL`; then we dial again from a
//! fresh port.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog: room for a burst of connections while handshakes run.
pub const LISTEN_BACKLOG: u32 = 1024;

fn reuse_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Binds a listener with port reuse.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = reuse_socket(addr)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG as i32)?;
    TcpListener::from_std(s.into())
}

/// Where a dial may leave from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialFrom {
    /// The listen port and nothing else: a hole-punching dial (TCP simultaneous open) from any
    /// other port cannot meet the peer's, and would mislead NAT measurement. If the kernel
    /// refuses the port, the dial fails with that error.
    ListenPort,
    /// The listen port if the kernel allows it, else a fresh port (the 4-tuple to this peer is
    /// taken, e.g. by a connection still open): for ordinary dials.
    ListenPortOrFresh,
    /// A fresh port: an ordinary dial that must not take the 4-tuple of a hole punch running
    /// toward the same peer address (a punch dial from the listen port would be refused, and
    /// the peer's punch SYN would meet this socket instead, with the wrong handshake role).
    Fresh,
}

/// Whether `e` is the kernel refusing to dial from a shared port: the 4-tuple is taken
/// (`EADDRNOTAVAIL`) or the port cannot be shared (`EADDRINUSE`).
pub fn is_port_refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.kind() == io::ErrorKind::AddrInUse
}

/// Connects to `peer` from `local` (port reuse). With [`DialFrom::ListenPortOrFresh`], if the
/// kernel refuses the port ([`is_port_refused`]) it dials again from a fresh port. Returns
/// the stream and whether the fresh port was used.
pub async fn connect(
    local: SocketAddr,
    peer: SocketAddr,
    timeout: Duration,
    from: DialFrom,
) -> io::Result<(TcpStream, bool)> {
    let attempt = async {
        if from == DialFrom::Fresh {
            return connect_from(None, peer).await.map(|s| (s, true));
        }
        match connect_from(Some(local), peer).await {
            Ok(s) => Ok((s, false)),
            Err(e) if from == DialFrom::ListenPortOrFresh && is_port_refused(&e) => {
                tracing::info!(%peer, error = %e, "port reuse refused; dialing from a fresh port");
                connect_from(None, peer).await.map(|s| (s, true))
            }
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

async fn connect_from(local: Option<SocketAddr>, peer: SocketAddr) -> io::Result<TcpStream> {
    let s = match local {
        Some(local) => {
            // Bind to the listen port, on the wildcard or the same address
            // family as the peer.
            let local = match (local, peer) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                    local
                }
                (_, p) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!("listen address family differs from {p}"),
                    ));
                }
            };
            let s = reuse_socket(local)?;
            s.bind(&local.into())?;
            s
        }
        None => {
            let s = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            s
        }
    };
    let s = TcpSocket::from_std_stream(s.into());
    let stream = s.connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_from_the_listen_port_and_falls_back_when_the_4_tuple_is_taken() {
        let server = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let server_addr = server.local_addr().unwrap();
        let ours = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = ours.local_addr().unwrap();
        let t = Duration::from_secs(5);

        // First dial: from our listen port.
        let (first, fresh) = connect(local, server_addr, t, DialFrom::ListenPortOrFresh)
            .await
            .unwrap();
        assert!(!fresh);
        assert_eq!(first.local_addr().unwrap(), local);
        let (_accepted, _) = server.accept().await.unwrap();

        // Same peer again while the first is open: the 4-tuple is taken, so
        // the kernel refuses, and we dial from a fresh port instead.
        let (second, fresh) = connect(local, server_addr, t, DialFrom::ListenPortOrFresh)
            .await
            .unwrap();
        assert!(fresh);
        assert_ne!(second.local_addr().unwrap().port(), local.port());

        // A punch dial never leaves from another port: it fails with the kernel's word.
        let punch = connect(local, server_addr, t, DialFrom::ListenPort).await;
        let e = punch.expect_err("the listen port's 4-tuple is taken");
        assert!(is_port_refused(&e), "{e:?}");
        drop(first);
    }

    #[tokio::test]
    async fn a_listener_and_dialers_share_the_port() {
        // Listening and dialing from one port (the point of port reuse).
        let ours = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = ours.local_addr().unwrap();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let p = listen("127.0.0.1:0".parse().unwrap()).unwrap();
            let t = Duration::from_secs(5);
            let (s, fresh) = connect(local, p.local_addr().unwrap(), t, DialFrom::ListenPort)
                .await
                .unwrap();
            assert!(!fresh);
            assert_eq!(s.local_addr().unwrap().port(), local.port());
            peers.push((p, s));
        }
        // And the listener still accepts.
        let c = TcpStream::connect(local).await.unwrap();
        let (a, _) = ours.accept().await.unwrap();
        assert_eq!(a.peer_addr().unwrap(), c.local_addr().unwrap());
    }
}
