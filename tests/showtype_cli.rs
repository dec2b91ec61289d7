//! `natkit showtype` on loopback: a few DHT nodes report the address they see
//! us at; every one is on loopback, which the classifier refuses (it sees us
//! without a NAT), so the class is unknown and each report is listed as
//! evidence, not counted. Without --bootstrap it is a usage error.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use natkit::dht::dht::Dht;

mod common;
use common::natkit;

async fn dht_node(bootstrap: &[SocketAddr]) -> Dht {
    Dht::builder()
        .bind_addr(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0))
        .bootstrap(bootstrap)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showtype_prints_the_udp_class_and_the_evidence() {
    let boot = dht_node(&[]).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(dht_node(&[boot.local_addr()]).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let bootstrap = boot.local_addr().to_string();
    let run = move |json: bool| {
        let mut args = vec!["showtype", "--bind", "127.0.0.1", "--bootstrap", &bootstrap];
        if json {
            args.push("--json");
        }
        natkit(&key, &args)
    };
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(true)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["transport"], "udp");
    assert_eq!(v["nat"], "unknown", "{v}");
    assert!(v["class"].as_str().unwrap().starts_with("unknown"), "{v}");
    let evidence = v["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty(), "{v}");
    let ours: Vec<SocketAddr> = std::iter::once(&boot)
        .chain(&others)
        .map(Dht::local_addr)
        .collect();
    for e in evidence {
        let reporter: SocketAddr = e["reporter"].as_str().unwrap().parse().unwrap();
        assert!(ours.contains(&reporter), "{e}");
        let observed: SocketAddr = e["observed"].as_str().unwrap().parse().unwrap();
        assert_eq!(observed.port(), v["local_port"].as_u64().unwrap() as u16);
        assert_eq!(e["counted"], false, "{e}");
    }

    // Human-readable: the class, then one line per report.
    let out = tokio::task::spawn_blocking(move || run(false))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("udp: unknown"), "{stdout}");
    assert!(stdout.contains(" saw us at 127.0.0.1:"), "{stdout}");

    for d in others {
        d.shutdown().await;
    }
    boot.shutdown().await;
}

#[test]
fn showtype_without_bootstrap_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = natkit(&dir.path().join("key"), &["showtype"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--bootstrap"), "{stderr}");
    assert!(out.stdout.is_empty());
}
