//! `scripts/bench.sh lines`: throughput of lines over one natkit connection on
//! loopback, against plain tokio TCP moving the same bytes in the same run, and
//! the memory of idle connections.
//!
//! Prints one figure per line and, last, a summary `lines: key=value ...`.
//! Run with `cargo bench --bench lines` (or `-- --quick` for a smoke run).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use natkit::identity::Keypair;
use natkit::net::handshake::{self, HandshakeOptions, LocalIdentity, Role};
use natkit::net::{Net, NetConfig, NetEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn key(n: u32) -> Keypair {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    Keypair::from_seed(seed)
}

fn line_of(len: usize) -> String {
    // `len` bytes including the '\n' terminator.
    "x".repeat(len - 1)
}

/// Plain tokio TCP: the same bytes (lines with terminators), written in
/// 64 KiB chunks and read into a 64 KiB buffer, with no framing, no line
/// splitting and no copies: the ceiling for any line protocol. Returns bytes/s.
async fn raw_tcp(line_len: usize, total_bytes: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        while got < total_bytes {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut chunk = Vec::new();
    let mut l = line_of(line_len).into_bytes();
    l.push(b'\n');
    while chunk.len() + l.len() <= 64 * 1024 {
        chunk.extend_from_slice(&l);
    }
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total_bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    let got = reader.await.unwrap();
    got as f64 / t0.elapsed().as_secs_f64()
}

/// Lines through natkit: the sender queues lines with the async API
/// (backpressure), the receiver takes them in batches. Returns (lines/s, bytes/s).
async fn natkit_lines(plaintext: bool, line_len: usize, count: usize) -> (f64, f64) {
    let cfg = NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        plaintext,
        allow_plaintext: plaintext,
        ..NetConfig::default()
    };
    let a = Net::bind(key(1), cfg.clone()).await.unwrap();
    let b = Net::bind(key(2), cfg).await.unwrap();
    let _ = b.events();
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    let ba = loop {
        if let Some(NetEvent::Connected(c)) = b.next_event().await {
            break c;
        }
    };
    let line = line_of(line_len);
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..count {
            ab.send(&line).await.unwrap();
        }
        ab
    });
    let mut got = 0usize;
    let mut batch = Vec::with_capacity(4096);
    while got < count {
        batch.clear();
        let n = ba.recv_many(&mut batch, 4096).await;
        assert!(n > 0, "connection ended early");
        got += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ab = sender.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    (count as f64 / secs, (count * line_len) as f64 / secs)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: open `n` authenticated connections (distinct identities, no
/// Net needed on this side) to `addr`, print "ready", then idle until stdin closes.
async fn idle_client(addr: SocketAddr, server: String, n: usize) {
    let expected = server.parse().unwrap();
    let mut conns = Vec::with_capacity(n);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let local = LocalIdentity::new(key(100_000 + i as u32)).unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let peer_addr = s.peer_addr().unwrap();
            handshake::run(
                &mut s,
                HandshakeOptions {
                    local: &local,
                    role: Role::Initiator,
                    expected: Some(expected),
                    peer_addr,
                    want_plaintext: false,
                    allow_plaintext: false,
                },
            )
            .await
            .unwrap();
            s
        }));
    }
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(conns);
}

async fn idle_rss(n: usize) -> (f64, u64, u64) {
    let cfg = NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_inbound: n + 10,
        // Idle means idle: no keepalive traffic during the measurement.
        ping_after: Duration::from_secs(3600),
        dead_after: Duration::from_secs(7200),
        ..NetConfig::default()
    };
    let server = Net::bind(key(1), cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(std::process::id());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--idle-client",
            &server.local_addr().to_string(),
            &server.node_id().to_string(),
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut l).unwrap();
        l
    })
    .await
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    while server.stats().inbound < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(std::process::id());
    let client_rss = rss_kib(child.id());
    drop(child.stdin.take());
    let _ = child.wait();
    server.shutdown().await;
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;
    (per_conn, after - before.min(after), client_rss)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("--idle-client") {
        let addr = args[2].parse().unwrap();
        let n = args[4].parse().unwrap();
        rt.block_on(idle_client(addr, args[3].clone(), n));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    rt.block_on(async {
        let n64 = 3_000_000 / scale;
        let n1k = 400_000 / scale;
        let raw64 = raw_tcp(64, n64 * 64).await;
        let raw1k = raw_tcp(1024, n1k * 1024).await;
        println!("raw tcp, 64 B lines:            {:>8.0} MB/s  ({:.2} M lines/s)", raw64 / 1e6, raw64 / 64.0 / 1e6);
        println!("raw tcp, 1 KiB lines:           {:>8.0} MB/s", raw1k / 1e6);
        let (p64_l, p64_b) = natkit_lines(true, 64, n64).await;
        let (e64_l, e64_b) = natkit_lines(false, 64, n64).await;
        let (p1k_l, p1k_b) = natkit_lines(true, 1024, n1k).await;
        let (e1k_l, e1k_b) = natkit_lines(false, 1024, n1k).await;
        println!("natkit plaintext, 64 B lines:   {:>8.2} M lines/s  {:>6.0} MB/s  ({:.0}% of raw)", p64_l / 1e6, p64_b / 1e6, 100.0 * p64_b / raw64);
        println!("natkit encrypted, 64 B lines:   {:>8.2} M lines/s  {:>6.0} MB/s  ({:.0}% of raw)", e64_l / 1e6, e64_b / 1e6, 100.0 * e64_b / raw64);
        println!("natkit plaintext, 1 KiB lines:  {:>8.2} M lines/s  {:>6.0} MB/s  ({:.0}% of raw)", p1k_l / 1e6, p1k_b / 1e6, 100.0 * p1k_b / raw1k);
        println!("natkit encrypted, 1 KiB lines:  {:>8.2} M lines/s  {:>6.0} MB/s  ({:.0}% of raw)", e1k_l / 1e6, e1k_b / 1e6, 100.0 * e1k_b / raw1k);
        let idle_n = if quick { 1000 } else { 10_000 };
        let (per_conn, total, client) = idle_rss(idle_n).await;
        println!("{idle_n} idle connections: server RSS +{total} KiB = {per_conn:.1} KiB per connection (client process {client} KiB)");
        println!(
            "lines: plain64_mlps={:.2} enc64_mlps={:.2} plain1k_mbps={:.0} enc1k_mbps={:.0} raw1k_mbps={:.0} plain1k_ratio={:.2} enc1k_ratio={:.2} idle_conns={} idle_kib_per_conn={:.1}",
            p64_l / 1e6,
            e64_l / 1e6,
            p1k_b / 1e6,
            e1k_b / 1e6,
            raw1k / 1e6,
            p1k_b / raw1k,
            e1k_b / raw1k,
            idle_n,
            per_conn
        );
    });
}
