#!/usr/bin/python3
"""Minimal STUN Binding server for the natkit NAT lab (RFC 5389 + RFC 5780 CHANGE-REQUEST).

Listens on two IP addresses x two ports (four UDP sockets). A Binding request is answered with
MAPPED-ADDRESS and XOR-MAPPED-ADDRESS (the observed source of the request), RESPONSE-ORIGIN and
OTHER-ADDRESS; a CHANGE-REQUEST attribute makes the answer leave from the other IP and/or port.

miniupnpd needs this: it refuses to forward ports when its WAN address is in a reserved range
(the lab uses TEST-NET) unless a STUN test with CHANGE-REQUEST shows an unfiltered public mapping.

Usage: stun_server.py IP1 IP2 [PORT1 [PORT2]]   (defaults 3478 and 3479)
Runs until killed. Malformed packets are ignored; it never exits on bad input.
"""
import select
import socket
import struct
import sys

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
MAX_DATAGRAM_BYTES = 2048


def attr(kind, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad


def addr_value(ip, port):
    return struct.pack("!BBH", 0, 1, port) + socket.inet_aton(ip)


def xor_addr_value(ip, port):
    xport = port ^ (MAGIC_COOKIE >> 16)
    xip = struct.unpack("!I", socket.inet_aton(ip))[0] ^ MAGIC_COOKIE
    return struct.pack("!BBHI", 0, 1, xport, xip)


def parse_change_request(body):
    """Return the CHANGE-REQUEST flags of a request body (0 if absent or malformed)."""
    off = 0
    while off + 4 <= len(body):
        kind, length = struct.unpack_from("!HH", body, off)
        value = body[off + 4 : off + 4 + length]
        if len(value) < length:
            return 0
        if kind == ATTR_CHANGE_REQUEST and length == 4:
            return struct.unpack("!I", value)[0]
        off += 4 + length + ((4 - length % 4) % 4)
    return 0


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ips = [sys.argv[1], sys.argv[2]]
    ports = [int(sys.argv[3]) if len(sys.argv) > 3 else 3478,
             int(sys.argv[4]) if len(sys.argv) > 4 else 3479]
    socks = {}
    for i, ip in enumerate(ips):
        for p, port in enumerate(ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            socks[(i, p)] = s
    by_fd = {s.fileno(): key for key, s in socks.items()}
    print("stun ready %s %s ports %d %d" % (ips[0], ips[1], ports[0], ports[1]), flush=True)
    while True:
        readable, _, _ = select.select(list(socks.values()), [], [])
        for s in readable:
            i, p = by_fd[s.fileno()]
            try:
                data, (src_ip, src_port) = s.recvfrom(MAX_DATAGRAM_BYTES)
            except OSError:
                continue
            if len(data) < 20:
                continue
            mtype, mlen, cookie = struct.unpack_from("!HHI", data, 0)
            if mtype != BINDING_REQUEST or 20 + mlen > len(data):
                continue
            txid = data[8:20]
            flags = parse_change_request(data[20 : 20 + mlen])
            ri = 1 - i if flags & CHANGE_IP else i
            rp = 1 - p if flags & CHANGE_PORT else p
            body = attr(ATTR_MAPPED_ADDRESS, addr_value(src_ip, src_port))
            if cookie == MAGIC_COOKIE:
                body += attr(ATTR_XOR_MAPPED_ADDRESS, xor_addr_value(src_ip, src_port))
            body += attr(ATTR_RESPONSE_ORIGIN, addr_value(ips[ri], ports[rp]))
            body += attr(ATTR_OTHER_ADDRESS, addr_value(ips[1 - i], ports[1 - p]))
            reply = struct.pack("!HH", BINDING_RESPONSE, len(body)) + data[4:8] + txid + body
            try:
                socks[(ri, rp)].sendto(reply, (src_ip, src_port))
            except OSError:
                pass


if __name__ == "__main__":
    main()
