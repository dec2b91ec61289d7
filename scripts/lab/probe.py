#!/usr/bin/python3
"""Small network probes for the natkit NAT lab. Run inside a lab namespace with Debian's python3.

Subcommands (addresses are IP:PORT; every client has a bounded --timeout in seconds):
  udp-reflect --bind A          answer every datagram with "ip:port" of its observed source; prints
                                "ready" once bound, then "from ip:port" per datagram; runs until killed
  tcp-reflect --bind A          accept connections, write "ip:port\\n" of the observed peer, close
  udp-query --bind A --to B...  send one datagram to each B from ONE socket (retrying), print
                                "B -> observed" per answer; exit 1 if any destination stayed silent
  tcp-connect --to B [--bind A] connect, print the line the server sent; exit 1 on timeout/refusal
  udp-listen --bind A           print "got N from ip:port" for each datagram until --timeout, then
                                "total N"; exit 0 either way
  udp-send --to B [--bind A]    send --count datagrams (unsolicited traffic), exit 0
  udp-rtt --to B [--bind A]     ping-pong with a udp-reflect server --count times; print
                                "min_ms X max_ms Y replies N"; exit 1 if no reply at all
Exit codes: 0 ok, 1 the probe saw no answer / timeout, 2 usage error.
"""
import argparse
import socket
import sys
import time

MAX_DATAGRAM_BYTES = 2048
MAX_LINE_BYTES = 512


def ep(text):
    host, _, port = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError("expected IP:PORT, got %r" % text)
    return (host, int(port))


def fmt(addr):
    return "%s:%d" % (addr[0], addr[1])


def udp_reflect(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(a.bind)
    print("ready", flush=True)
    while True:
        data, src = s.recvfrom(MAX_DATAGRAM_BYTES)
        print("from %s" % fmt(src), flush=True)
        # Echo the request payload after the observed address so RTT probes can match replies.
        s.sendto(fmt(src).encode() + b" " + data[:64], src)


def tcp_reflect(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(a.bind)
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, src = s.accept()
        print("from %s" % fmt(src), flush=True)
        try:
            c.sendall((fmt(src) + "\n").encode())
        except OSError:
            pass
        c.close()


def udp_socket(bind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind:
        s.bind(bind)
    return s


def udp_query(a):
    s = udp_socket(a.bind)
    pending = {fmt(t): t for t in a.to}
    deadline = time.monotonic() + a.timeout
    ok = True
    while pending and time.monotonic() < deadline:
        for t in list(pending.values()):
            s.sendto(b"query", t)
        s.settimeout(0.2)
        end = min(deadline, time.monotonic() + 0.3)
        while pending and time.monotonic() < end:
            try:
                data, src = s.recvfrom(MAX_DATAGRAM_BYTES)
            except socket.timeout:
                continue
            key = fmt(src)
            if key in pending:
                del pending[key]
                observed = data.decode(errors="replace").split(" ")[0]
                print("%s -> %s" % (key, observed), flush=True)
    for key in pending:
        print("%s -> timeout" % key, flush=True)
        ok = False
    return 0 if ok else 1


def tcp_connect(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.bind:
        s.bind(a.bind)
    s.settimeout(a.timeout)
    try:
        s.connect(a.to)
        data = s.recv(MAX_LINE_BYTES)
    except socket.timeout:
        print("timeout", flush=True)
        return 1
    except OSError as e:
        print("error %s" % e, flush=True)
        return 1
    print(data.decode(errors="replace").strip(), flush=True)
    return 0


def udp_listen(a):
    s = udp_socket(a.bind)
    print("ready", flush=True)
    deadline = time.monotonic() + a.timeout
    n = 0
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            _, src = s.recvfrom(MAX_DATAGRAM_BYTES)
        except socket.timeout:
            break
        n += 1
        print("got %d from %s" % (n, fmt(src)), flush=True)
    print("total %d" % n, flush=True)
    return 0


def udp_send(a):
    s = udp_socket(a.bind)
    for _ in range(a.count):
        s.sendto(b"unsolicited", a.to)
        time.sleep(0.05)
    return 0


def udp_rtt(a):
    s = udp_socket(a.bind)
    rtts = []
    for i in range(a.count):
        tag = b"rtt%d" % i
        start = time.monotonic()
        s.sendto(tag, a.to)
        s.settimeout(a.timeout)
        while True:
            try:
                data, _ = s.recvfrom(MAX_DATAGRAM_BYTES)
            except socket.timeout:
                break
            if data.endswith(b" " + tag):
                rtts.append((time.monotonic() - start) * 1000.0)
                break
    if not rtts:
        print("timeout", flush=True)
        return 1
    print("min_ms %.3f max_ms %.3f replies %d" % (min(rtts), max(rtts), len(rtts)), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["udp-reflect", "tcp-reflect", "udp-query", "tcp-connect",
                                   "udp-listen", "udp-send", "udp-rtt"])
    p.add_argument("--bind", type=ep)
    p.add_argument("--to", type=ep, action="append", default=[])
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--count", type=int, default=5)
    a = p.parse_args()
    needs_bind = a.cmd in ("udp-reflect", "tcp-reflect", "udp-listen")
    if needs_bind and not a.bind:
        p.error("%s needs --bind" % a.cmd)
    if a.cmd in ("udp-query", "tcp-connect", "udp-send", "udp-rtt") and not a.to:
        p.error("%s needs --to" % a.cmd)
    if a.cmd == "tcp-connect":
        a.to = a.to[0]
    if a.cmd in ("udp-send", "udp-rtt"):
        a.to = a.to[0]
    fn = {"udp-reflect": udp_reflect, "tcp-reflect": tcp_reflect, "udp-query": udp_query,
          "tcp-connect": tcp_connect, "udp-listen": udp_listen, "udp-send": udp_send,
          "udp-rtt": udp_rtt}[a.cmd]
    try:
        sys.exit(fn(a) or 0)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
