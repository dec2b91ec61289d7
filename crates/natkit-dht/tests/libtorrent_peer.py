"""libtorrent DHT nodes on 127.0.0.1 for natkit's interop tests, driven over stdin/stdout.

Run with Debian's interpreter (the only one that can import python3-libtorrent):

    /usr/bin/python3 libtorrent_peer.py [--nodes N] [--max-seconds S]

It starts N libtorrent sessions bound to 127.0.0.1 only, with no default bootstrap router, no
LSD/UPnP/NAT-PMP, the per-IP DHT restrictions off and the DHT rate limits raised (all nodes share
one IP here), links them to each other, and prints one line:

    ready <port0> <port1> ...

Then it reads one command per line, words separated by spaces, and answers each with one line:
`ok key=value ...` or `err <message>`. Bytes travel as hex, lists are comma-separated. Nodes are
named by index; addresses are always 127.0.0.1 and only ports cross the protocol, so nothing
outside 127.0.0.0/8 can be contacted. Every wait is bounded (DEFAULT_TIMEOUT_S). Commands:

    ids                          -> ok ids=<hex>,... ports=<port>,...
    spawn <port>,...             -> a new node whose dht_bootstrap_nodes are these loopback ports
                                    (a real libtorrent bootstrap): ok node=<i> port=<port>
    add_node <i> <port>          -> add_dht_node(("127.0.0.1", port)): ok
    routing_table <i>            -> ok id=<hex> nodes=<hex>:<port>,...
    put_immutable <i> <data>     -> stores the bytes as a bencoded string:
                                    ok target=<hex> num_success=<n>
    get_immutable <i> <target>   -> ok found=1 item=<bencoded v> | ok found=0
    put_mutable <i> <sk> <pk> <salt> <data>
                                 -> sk is libtorrent's 64-byte expanded secret key; the binding
                                    gets the current item first and signs `data` as a bencoded
                                    string at seq = found + 1: ok seq=<n> num_success=<n>
    get_mutable <i> <pk> <salt>  -> ok found=1 seq=<n> item=<bencoded v> sig=<hex>
                                    authoritative=<0|1> | ok found=0
    get_peers <i> <info_hash>    -> ok peers=127.0.0.1:<port>,...
    announce <i> <info_hash>     -> the binding cannot call dht_announce (its flags type is not
                                    exposed), so a torrent with that info-hash is added, which
                                    libtorrent announces on its listen port: ok port=<port>
    quit

Salts are hex of UTF-8 text (libtorrent hands salts back as str); "-" is the empty salt or list.

--max-seconds (default 300) ends the process whatever happens, so a lost parent never leaves it
running.
"""

import os
import shutil
import sys
import tempfile
import threading
import time
import warnings

import libtorrent as lt

LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT_S = 10.0
LINK_TIMEOUT_S = 10.0
ALERT_POLL_MS = 50
GET_PEERS_SETTLE_S = 0.5

warnings.simplefilter("ignore", DeprecationWarning)


def settings(bootstrap_ports):
    mask = (
        lt.alert.category_t.dht_notification
        | lt.alert.category_t.dht_operation_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification
    )
    return {
        "listen_interfaces": LOOPBACK + ":0",
        "outgoing_interfaces": LOOPBACK,
        "enable_dht": True,
        # Never the default dht.libtorrent.org router: only the loopback ports we are given.
        "dht_bootstrap_nodes": ",".join("%s:%d" % (LOOPBACK, p) for p in bootstrap_ports),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Every node is on 127.0.0.1: lift the one-node-per-IP and /24 rules ...
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        # ... and the per-IP rate limits (5 queries/s, 8000 B/s by default).
        "dht_block_ratelimit": 100000,
        "dht_upload_rate_limit": 1000000,
        # Announce an added torrent within a second, not within 15 minutes.
        "dht_announce_interval": 1,
        "alert_queue_size": 100000,
        "alert_mask": mask,
    }


class Node:
    def __init__(self, bootstrap_ports=()):
        self.session = lt.session(settings(bootstrap_ports))
        self.backlog = []  # events not yet claimed by a wait
        self.torrents = []

    def port(self):
        return self.session.listen_port()

    def node_id(self):
        state = self.session.dht_state()
        ids = state.get(b"node-id") if isinstance(state, dict) else None
        if not ids:
            return None
        return ids[0][:20]

    def pump(self, wait_ms):
        """Copies the fields of new alerts into plain dicts (alerts die at the next pop)."""
        self.session.wait_for_alert(wait_ms)
        for a in self.session.pop_alerts():
            e = event(a)
            if e is not None:
                self.backlog.append(e)
        del self.backlog[:-10000]

    def wait(self, pred, timeout):
        """The first event matching pred, or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.backlog):
                if pred(e):
                    del self.backlog[i]
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.pump(int(min(left * 1000, ALERT_POLL_MS)) + 1)

    def live_nodes(self, timeout):
        nid = self.node_id()
        if nid is None:
            return None, []
        self.session.dht_live_nodes(lt.sha1_hash(nid))
        e = self.wait(lambda e: e["type"] == "live_nodes", timeout)
        return nid, (e["nodes"] if e else [])


def hexs(b):
    return bytes(b).hex()


def encoded_item(a):
    """The bencoded value of an item alert, or None when nothing was found."""
    try:
        item = a.item  # raises when nothing was found
    except RuntimeError:
        return None
    # The binding wraps the value: {"key": target, "value": v} for immutable items and
    # {"key", "salt", "seq", "signature", "authoritative", "value"} for mutable ones.
    if isinstance(item, dict) and "key" in item and "value" in item:
        item = item["value"]
    return lt.bencode(item)


def event(a):
    kind = type(a).__name__
    if kind == "dht_put_alert":
        return {
            "type": "put",
            "target": str(a.target),
            "pk": bytes(a.public_key).hex(),
            "salt": a.salt,
            "seq": a.seq,
            "num_success": a.num_success,
        }
    if kind == "dht_immutable_item_alert":
        return {"type": "immutable", "target": str(a.target), "item": encoded_item(a)}
    if kind == "dht_mutable_item_alert":
        return {
            "type": "mutable",
            "pk": bytes(a.key).hex(),
            "salt": a.salt,
            "seq": a.seq,
            "sig": bytes(a.signature).hex(),
            "item": encoded_item(a),
            "authoritative": bool(a.authoritative),
        }
    if kind == "dht_get_peers_reply_alert":
        return {
            "type": "peers",
            "info_hash": str(a.info_hash),
            "peers": ["%s:%d" % (ip, port) for ip, port in a.peers()],
        }
    if kind == "dht_live_nodes_alert":
        return {
            "type": "live_nodes",
            "nodes": [[str(n["nid"]), n["endpoint"][1]] for n in a.nodes],
        }
    return None


class Driver:
    def __init__(self, n):
        self.nodes = [Node() for _ in range(n)]
        self.tmp = tempfile.mkdtemp(prefix="natkit-lt-")

    def link(self):
        """Every node knows node 0 and node 0 knows every node, verified by a ping each."""
        if len(self.nodes) < 2:
            return
        first = self.nodes[0]
        for n in self.nodes[1:]:
            n.session.add_dht_node((LOOPBACK, first.port()))
            first.session.add_dht_node((LOOPBACK, n.port()))
        deadline = time.monotonic() + LINK_TIMEOUT_S
        while time.monotonic() < deadline:
            _, nodes = first.live_nodes(1.0)
            if len(nodes) >= len(self.nodes) - 1:
                return
            time.sleep(0.05)
        raise RuntimeError("libtorrent nodes did not link within %ss" % LINK_TIMEOUT_S)

    def node(self, word):
        i = int(word)
        if not 0 <= i < len(self.nodes):
            raise ValueError("no node %d" % i)
        return self.nodes[i]

    def handle(self, words):
        cmd, args = words[0], words[1:]
        timeout = DEFAULT_TIMEOUT_S
        if cmd == "ids":
            ids = ",".join((n.node_id() or b"").hex() for n in self.nodes)
            ports = ",".join(str(n.port()) for n in self.nodes)
            return "ids=%s ports=%s" % (ids, ports)
        if cmd == "spawn":
            ports = [int(p) for p in unlist(args[0])]
            n = Node(ports)
            self.nodes.append(n)
            return "node=%d port=%d" % (len(self.nodes) - 1, n.port())
        if cmd == "add_node":
            self.node(args[0]).session.add_dht_node((LOOPBACK, int(args[1])))
            return ""
        if cmd == "routing_table":
            nid, nodes = self.node(args[0]).live_nodes(timeout)
            listed = ",".join("%s:%d" % (h, p) for h, p in nodes) or "-"
            return "id=%s nodes=%s" % ((nid or b"").hex(), listed)
        if cmd == "put_immutable":
            n = self.node(args[0])
            target = str(n.session.dht_put_immutable_item(bytes.fromhex(args[1])))
            e = n.wait(lambda e: e["type"] == "put" and e["target"] == target, timeout)
            if e is None:
                raise TimeoutError("no dht_put_alert for %s" % target)
            return "target=%s num_success=%d" % (target, e["num_success"])
        if cmd == "get_immutable":
            n = self.node(args[0])
            target = args[1]
            n.session.dht_get_immutable_item(lt.sha1_hash(bytes.fromhex(target)))
            e = n.wait(lambda e: e["type"] == "immutable" and e["target"] == target, timeout)
            if e is None:
                raise TimeoutError("no dht_immutable_item_alert for %s" % target)
            if e["item"] is None:
                return "found=0"
            return "found=1 item=%s" % e["item"].hex()
        if cmd == "put_mutable":
            n = self.node(args[0])
            sk, pk, salt, data = args[1], args[2], salt_text(args[3]), args[4]
            # bytes reach the binding's std::string arguments unchanged (a str would be UTF-8).
            n.session.dht_put_mutable_item(
                bytes.fromhex(sk), bytes.fromhex(pk), bytes.fromhex(data), salt
            )
            e = n.wait(
                lambda e: e["type"] == "put" and e["pk"] == pk and e["salt"] == salt,
                timeout,
            )
            if e is None:
                raise TimeoutError("no dht_put_alert for %s/%s" % (pk, salt))
            return "seq=%d num_success=%d" % (e["seq"], e["num_success"])
        if cmd == "get_mutable":
            n = self.node(args[0])
            pk, salt = args[1], salt_text(args[2])
            n.session.dht_get_mutable_item(bytes.fromhex(pk), salt)
            best, authoritative = None, False
            deadline = time.monotonic() + timeout
            while not authoritative:
                e = n.wait(
                    lambda e: e["type"] == "mutable" and e["pk"] == pk and e["salt"] == salt,
                    max(deadline - time.monotonic(), 0),
                )
                if e is None:
                    break
                if e["item"] is not None and (best is None or e["seq"] >= best["seq"]):
                    best = e
                authoritative = e["authoritative"]
            if best is None:
                return "found=0"
            return "found=1 seq=%d item=%s sig=%s authoritative=%d" % (
                best["seq"],
                best["item"].hex(),
                best["sig"],
                authoritative,
            )
        if cmd == "get_peers":
            n = self.node(args[0])
            ih = args[1]
            n.session.dht_get_peers(lt.sha1_hash(bytes.fromhex(ih)))
            peers = set()
            # One alert per answering node: after the first, collect for a moment more.
            match = lambda e: e["type"] == "peers" and e["info_hash"] == ih
            e = n.wait(match, timeout)
            settle = time.monotonic() + GET_PEERS_SETTLE_S
            while e is not None:
                peers.update(e["peers"])
                e = n.wait(match, max(settle - time.monotonic(), 0))
            return "peers=%s" % (",".join(sorted(peers)) or "-")
        if cmd == "announce":
            n = self.node(args[0])
            p = lt.add_torrent_params()
            p.info_hashes = lt.info_hash_t(lt.sha1_hash(bytes.fromhex(args[1])))
            p.save_path = tempfile.mkdtemp(dir=self.tmp)
            p.flags = p.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
            n.torrents.append(n.session.add_torrent(p))
            return "port=%d" % n.port()
        raise ValueError("unknown command %r" % cmd)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def unlist(word):
    return [] if word == "-" else word.split(",")


def salt_text(word):
    return "" if word == "-" else bytes.fromhex(word).decode("utf-8")


def reply(line):
    sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()


def main():
    n, max_seconds = 3, 300.0
    args = sys.argv[1:]
    while args:
        flag = args.pop(0)
        if flag == "--nodes":
            n = int(args.pop(0))
        elif flag == "--max-seconds":
            max_seconds = float(args.pop(0))
        else:
            sys.exit("usage: libtorrent_peer.py [--nodes N] [--max-seconds S]")
    watchdog = threading.Timer(max_seconds, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    driver = Driver(n)
    try:
        driver.link()
        sys.stdout.write("ready %s\n" % " ".join(str(x.port()) for x in driver.nodes))
        sys.stdout.flush()
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                reply("ok")
                break
            try:
                reply("ok " + driver.handle(words))
            except Exception as e:  # report and keep serving
                reply("err %s: %s" % (type(e).__name__, str(e).replace("\n", " ")))
    finally:
        driver.close()


if __name__ == "__main__":
    main()
