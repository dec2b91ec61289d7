#!/usr/bin/python3
"""Userspace delay link for the natkit NAT lab, used when the kernel lacks tc netem.

Creates two TAP devices, NAME_A inside network namespace NS_A and NAME_B inside NS_B, and copies
every Ethernet frame between them after DELAY_MS milliseconds (one-way, each direction). Together
they behave like a veth pair with latency. The devices are not persistent: they vanish when this
process exits, so killing it (natlab.sh down does) removes the link.

Usage: delay_link.py NS_A NAME_A NS_B NAME_B DELAY_MS
Prints "ready" once both devices exist. Runs until killed.
"""
import ctypes
import fcntl
import heapq
import os
import select
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME_BYTES = 65536
MAX_QUEUED_FRAMES = 10000  # beyond this the link drops, like a full queue

libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name):
    fd = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (name, os.strerror(err)))
    finally:
        os.close(fd)


def open_tap(ns, ifname):
    enter_netns(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ns_a, if_a, ns_b, if_b, delay_ms = sys.argv[1:6]
    delay = int(delay_ms) / 1000.0
    fa = open_tap(ns_a, if_a)
    fb = open_tap(ns_b, if_b)
    peer = {fa: fb, fb: fa}
    queue = []  # (due, seq, out_fd, frame)
    seq = 0
    print("ready", flush=True)
    while True:
        timeout = None
        if queue:
            timeout = max(0.0, queue[0][0] - time.monotonic())
        readable, _, _ = select.select([fa, fb], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, MAX_FRAME_BYTES)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if not frame or len(queue) >= MAX_QUEUED_FRAMES:
                    break
                seq += 1
                heapq.heappush(queue, (now + delay, seq, peer[fd], frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                os.write(out, frame)
            except OSError:
                pass  # device down or queue full: the frame is lost, as on a real link


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
