#!/usr/bin/python3
"""Time from start to a working port mapping, in a NAT lab (natA runs miniupnpd).

usage: portmap_bench.py LAB NATKIT ROUNDS

For each round and each client: natkit (pcp, natpmp, upnp with SSDP, upnp with the description
URL, auto) from process start to its "created" line, then SIGTERM (removal, not timed);
upnpc (SSDP discovery, and -u URL) and natpmpc for the whole add command, then their delete.
All run inside the lab's alice namespace. Prints a table and a last line
`portmap: key=value ...` with medians in milliseconds.
"""
import signal
import random
import statistics
import subprocess
import sys
import time

lab, natkit, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
ns = f"{lab}-alice"
gw = "10.0.1.1"
alice = "10.0.1.2"
url = f"http://{gw}:2869/rootDesc.xml"


def netns(argv):
    return ["ip", "netns", "exec", ns] + argv


def natkit_add(method, port, extra=()):
    argv = netns([natkit, "--json", "map", "add", str(port), "--method", method, "--lease", "120", *extra])
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    dt = time.monotonic() - t0
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)
    if '"created"' not in line:
        raise SystemExit(f"natkit {method} failed: {line!r} {p.stderr.read()}")
    return dt


def timed(argv, ok, undo):
    t0 = time.monotonic()
    r = subprocess.run(netns(argv), capture_output=True, text=True, timeout=30)
    dt = time.monotonic() - t0
    if ok not in r.stdout:
        raise SystemExit(f"{argv} failed: {r.stdout} {r.stderr}")
    subprocess.run(netns(undo), capture_output=True, timeout=30)
    return dt


clients = {
    "natkit_pcp": lambda p: natkit_add("pcp", p),
    "natkit_natpmp": lambda p: natkit_add("natpmp", p),
    "natkit_upnp_ssdp": lambda p: natkit_add("upnp", p),
    "natkit_upnp_url": lambda p: natkit_add("upnp", p, ["--upnp-url", url]),
    "natkit_auto": lambda p: natkit_add("auto", p),
    "upnpc_ssdp": lambda p: timed(["upnpc", "-i", "-a", alice, str(p), str(p), "TCP", "120"],
                                  "is redirected", ["upnpc", "-u", url, "-d", str(p), "TCP"]),
    "upnpc_url": lambda p: timed(["upnpc", "-u", url, "-a", alice, str(p), str(p), "TCP", "120"],
                                 "is redirected", ["upnpc", "-u", url, "-d", str(p), "TCP"]),
    "natpmpc": lambda p: timed(["natpmpc", "-g", gw, "-a", str(p), str(p), "tcp", "120"],
                               "Mapped public port", ["natpmpc", "-g", gw, "-a", str(p), str(p), "tcp", "0"]),
}

results = {k: [] for k in clients}
port = 7000
# A fixed-seed shuffle per round: no client always follows the same other
# client (the gateway's leftover work from one removal must not land on the
# same client every round).
rng = random.Random(42)
order = list(clients.items())
for _ in range(rounds):
    rng.shuffle(order)
    for name, run in order:
        port += 1
        # Let the gateway finish the previous client's removal (miniupnpd is
        # single-threaded and rewrites nftables rules), so that every
        # measurement starts against an idle gateway.
        time.sleep(0.3)
        results[name].append(run(port) * 1000)

print(f"{'client':<18} {'median ms':>10} {'min ms':>8} {'max ms':>8}   ({rounds} rounds)")
for name, v in results.items():
    print(f"{name:<18} {statistics.median(v):>10.1f} {min(v):>8.1f} {max(v):>8.1f}")
# Auto against the fastest forced method, paired within each round (the
# gateway's jitter is shared by the pair, so the difference is steadier
# than the difference of the medians).
fastest = min(("natkit_pcp", "natkit_natpmp", "natkit_upnp_ssdp"), key=lambda k: statistics.median(results[k]))
diffs = [a - b for a, b in zip(results["natkit_auto"], results[fastest])]
print(f"auto - {fastest}, paired per round: median {statistics.median(diffs):+.1f} ms "
      f"(min {min(diffs):+.1f}, max {max(diffs):+.1f})")
summary = " ".join(f"{k}_ms={statistics.median(v):.1f}" for k, v in results.items())
print(f"portmap: {summary} auto_minus_fastest_ms={statistics.median(diffs):.1f}")
