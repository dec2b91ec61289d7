#!/usr/bin/env bash
# natlab.sh - the natkit NAT lab: reproducible NAT topologies in Linux network namespaces.
#
# This script is the ONE implementation of the lab topology; the Rust harness (crates/natkit-lab)
# calls it. See docs/natlab.md for the diagram, addresses and quirks.
#
# Safety: the host's own (root) namespace, interfaces, routes and firewall are never touched. Every
# veth is created directly inside lab namespaces, only TEST-NET (203.0.113.0/24, 198.51.100.0/24)
# and private/shared ranges (10/8, 100.64/10) are used, and no namespace has a route leaving the lab.
set -euo pipefail

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly STATE_ROOT="${NATLAB_STATE_ROOT:-/run/natkit-lab}"
readonly PY=/usr/bin/python3
readonly STUN_PORT=3478
readonly STUN_ALT_PORT=3479
# Bounded waits (tenths of a second).
readonly STUN_READY_TENTHS=30      # the STUN responder binds in ~50 ms
readonly UPNPD_READY_TENTHS=80     # miniupnpd runs its STUN test then serves, ~0.2 s seen
readonly KILL_GRACE_TENTHS=5       # TERM -> KILL grace period for processes in lab namespaces

# Fixed addresses (identical in every lab; namespaces isolate them).
readonly INET_IP=203.0.113.1
readonly RDV_IP=203.0.113.100
readonly RDV_IP2=203.0.113.101
readonly PUB2_IP=203.0.113.200
readonly NATA_WAN=203.0.113.10
readonly NATB_WAN=203.0.113.20
readonly CGNAT_WAN=203.0.113.30
readonly OPEN_A_NET=198.51.100.0/25    # natA's LAN when natA is open/firewall
readonly OPEN_B_NET=198.51.100.128/25  # natB's LAN when natB is open/firewall

NAME=nk
HOSTS="internet rendezvous public2 natA alice carol natB bob cgnat home dave"

usage() {
  cat >&2 <<'USAGE'
usage: natlab.sh [--name NAME] up <natA-type> <natB-type> [--delay MS] [--upnp natA|natB|both] [--owner PID]
       natlab.sh [--name NAME] down        remove the lab NAME (works after a crash too)
       natlab.sh down --all                remove every lab that has a state dir
       natlab.sh status                    list labs, owners and namespaces
       natlab.sh gc                        remove labs whose owner process is dead
       natlab.sh [--name NAME] exec <host> -- cmd...   run a command inside a lab host
       natlab.sh [--name NAME] miniupnpd-restart <natA|natB>   stop miniupnpd (TERM), drop its
                                           lease file and start it again (a gateway reboot)
       natlab.sh [--name NAME] miniupnpd-stop <natA|natB>      stop miniupnpd and drop its
                                           forwardings and the conntrack table
       natlab.sh [--name NAME] miniupnpd-start <natA|natB>     start a stopped miniupnpd (the
                                           service switched on: nothing else is touched)
types: open | cone | symmetric | firewall
hosts: internet rendezvous public2 natA alice carol natB bob cgnat home dave
NAME: 1-20 of [A-Za-z0-9_] (default nk); namespaces are NAME-<host>; state in /run/natkit-lab/NAME
USAGE
  exit 2
}

die() { echo "natlab: error: $*" >&2; exit 1; }
usage_err() { echo "natlab: $*" >&2; usage; }

ns() { echo "$NAME-$1"; }
nsx() { local n="$1"; shift; ip netns exec "$(ns "$n")" "$@"; }

# ---------------------------------------------------------------- owner / gc helpers
proc_start_time() { # pid -> starttime field of /proc/pid/stat, empty if dead
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  # after "comm) " the fields start at field 3 (state); starttime is field 22
  awk '{print $20}' <<<"$stat"
}

owner_alive() { # state dir -> 0 if owner alive or no owner (manual lab)
  local f="$1/owner" pid st
  [[ -f "$f" ]] || return 0
  read -r pid st <"$f" || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [[ "$pid" == 0 ]] && return 0
  running "$pid" && [[ "$(proc_start_time "$pid")" == "$st" ]]
}

running() { # pid -> 0 if it exists and is not a zombie (zombies wait for their parent to reap them)
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

lab_namespaces() { # all namespaces of lab $1
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-[A-Za-z0-9]+\$" || true
}

down_lab() {
  local lab="$1" nss pids="" n p i
  nss="$(lab_namespaces "$lab")"
  for n in $nss; do pids+=" $(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')"; done
  pids="$(echo $pids)"
  if [[ -n "$pids" ]]; then
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < KILL_GRACE_TENTHS; i++)); do
      local alive=""
      for p in $pids; do running "$p" && alive+=" $p"; done
      [[ -z "$alive" ]] && break
      sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  for n in $nss; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "${STATE_ROOT:?}/$lab"
}

gc_labs() {
  local d
  [[ -d "$STATE_ROOT" ]] || return 0
  for d in "$STATE_ROOT"/*/; do
    [[ -d "$d" ]] || continue
    if ! owner_alive "$d"; then
      echo "natlab: removing lab $(basename "$d") (owner process is gone)" >&2
      down_lab "$(basename "$d")"
    fi
  done
}

# ---------------------------------------------------------------- building blocks
mkns() {
  local n; n="$(ns "$1")"
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

# veth HOST_A IFNAME_A HOST_B IFNAME_B  (both ends created directly inside lab namespaces)
veth() {
  ip link add "$2" netns "$(ns "$1")" type veth peer name "$4" netns "$(ns "$3")"
}

bridge() { # host bridge-name [ports...]
  local h="$1" br="$2"; shift 2
  ip -n "$(ns "$h")" link add "$br" type bridge
  local p
  for p in "$@"; do ip -n "$(ns "$h")" link set "$p" master "$br" up; done
  ip -n "$(ns "$h")" link set "$br" up
}

addr() { ip -n "$(ns "$1")" addr add "$2" dev "$3"; }
up_if() { ip -n "$(ns "$1")" link set "$2" up; }
route() { local h="$1"; shift; ip -n "$(ns "$h")" route add "$@"; }

# Routes every internet-attached namespace needs: the public LAN subnets behind open/firewall routers.
public_routes() {
  local h="$1"
  [[ "$h" != natA ]] && route "$h" "$OPEN_A_NET" via "$NATA_WAN"
  [[ "$h" != natB ]] && route "$h" "$OPEN_B_NET" via "$NATB_WAN"
  return 0
}

# router_rules HOST TYPE UPNP(0|1): nftables for a router with wan0 and lan0.
router_rules() {
  local h="$1" type="$2" upnp="$3" nat="" inbound="" stun="" upnp_fwd="" upnp_pre="" upnp_post=""
  case "$type" in
    cone) nat='oifname "wan0" masquerade' ;;
    symmetric) nat='oifname "wan0" masquerade fully-random' ;;
    open) inbound='iifname "wan0" oifname "lan0" accept' ;;
    firewall) ;;
  esac
  if [[ "$upnp" == 1 ]]; then
    # miniupnpd's STUN test gets answers from another IP/port: not conntrack-related, accept them.
    stun="iifname \"wan0\" ip saddr { $RDV_IP, $RDV_IP2 } udp sport { $STUN_PORT, $STUN_ALT_PORT } accept"
    upnp_fwd='jump miniupnpd'
    upnp_pre='jump prerouting_miniupnpd'
    upnp_post='jump postrouting_miniupnpd'
  fi
  nsx "$h" nft -f - <<NFT
table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iif "lo" accept
    iifname "lan0" accept
    $stun
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
    iifname "lan0" oifname "lan0" accept
    $inbound
    $upnp_fwd
  }
  chain output {
    type filter hook output priority filter; policy accept;
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    $upnp_pre
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    $upnp_post
    $nat
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
NFT
  nsx "$h" sysctl -qw net.ipv4.ip_forward=1
  # Bridged LAN traffic (alice <-> carol) must stay a plain switch, not pass netfilter (the
  # kernel has br_netfilter built in; this sysctl is per network namespace).
  if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    nsx "$h" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-arptables=0
  fi
}

netem_supported() { # does this kernel have sch_netem? (probed on lo of the lab's internet namespace)
  if nsx internet tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    nsx internet tc qdisc del dev lo root 2>/dev/null || true
    return 0
  fi
  return 1
}

# wan_link ROUTER MS: the router's wan0 <-> port ROUTER on the internet bridge, with MS one-way delay
# in each direction: tc netem on both veth ends, or (kernels without netem) a userspace TAP pair.
wan_link() {
  local r="$1" ms="$2" dir="$STATE_ROOT/$NAME"
  if [[ "$ms" == 0 ]]; then
    veth internet "$r" "$r" wan0
  elif [[ "$DELAY_MODE" == netem ]]; then
    veth internet "$r" "$r" wan0
    nsx "$r" tc qdisc add dev wan0 root netem delay "${ms}ms"
    nsx internet tc qdisc add dev "$r" root netem delay "${ms}ms"
  else
    bg_in internet "$dir/delay-$r.log" "$PY" "$SCRIPT_DIR/lab/delay_link.py" "$(ns "$r")" wan0 "$(ns internet)" "$r" "$ms"
    wait_for "$STUN_READY_TENTHS" "delay link" grep -q "^ready" "$dir/delay-$r.log" \
      || die "delay link for $r did not start: $(cat "$dir/delay-$r.log")"
  fi
}

bg_in() { # host logfile cmd... : start a daemon inside a namespace, detached from our stdio
  local h="$1" log="$2"; shift 2
  setsid ip netns exec "$(ns "$h")" "$@" </dev/null >"$log" 2>&1 &
}

wait_for() { # tenths description cmd... : poll until cmd succeeds
  local tenths="$1" what="$2" i; shift 2
  for ((i = 0; i < tenths; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_miniupnpd() { # router lan_host lan_ip lan_subnet
  local r="$1" client="$2" gw="$3" subnet="$4" dir="$STATE_ROOT/$NAME"
  local conf="$dir/miniupnpd-$r.conf"
  cat >"$conf" <<CONF
# generated by natlab.sh for lab $NAME, router $r
ext_ifname=wan0
listening_ip=lan0
http_port=2869
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
ipv6_disable=yes
system_uptime=yes
lease_file=$dir/miniupnpd-$r.leases
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
# miniupnpd 2.3.1 refuses reserved WAN addresses (TEST-NET) unless a STUN test proves the mapping.
ext_perform_stun=yes
ext_stun_host=$RDV_IP
ext_stun_port=$STUN_PORT
uuid=$(cat /proc/sys/kernel/random/uuid)
allow 1024-65535 $subnet 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
CONF
  bg_in "$r" "$dir/miniupnpd-$r.log" miniupnpd -d -f "$conf" -P "$dir/miniupnpd-$r.pid"
  if ! wait_for "$UPNPD_READY_TENTHS" "miniupnpd" timeout 0.5 ip netns exec "$(ns "$client")" natpmpc -g "$gw"; then
    echo "natlab: miniupnpd log ($dir/miniupnpd-$r.log):" >&2
    tail -n 20 "$dir/miniupnpd-$r.log" >&2 || true
    die "miniupnpd in $r did not answer NAT-PMP from $client within $((UPNPD_READY_TENTHS / 10)) s"
  fi
  if grep -q "Port forwarding is impossible" "$dir/miniupnpd-$r.log"; then
    tail -n 20 "$dir/miniupnpd-$r.log" >&2 || true
    die "miniupnpd in $r refuses port forwarding (STUN workaround failed)"
  fi
}

stop_miniupnpd() { # router: stop it like a power-off (mappings and lease file gone)
  local r="$1" dir="$STATE_ROOT/$NAME" pid i
  [[ -f "$dir/miniupnpd-$r.conf" ]] || die "no miniupnpd in $r of lab $NAME"
  pid="$(cat "$dir/miniupnpd-$r.pid" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < KILL_GRACE_TENTHS * 4; i++)); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/miniupnpd-$r.leases" "$dir/miniupnpd-$r.pid"
  # Its forwardings are gone with it: empty miniupnpd's chains and the conntrack table.
  for i in miniupnpd prerouting_miniupnpd postrouting_miniupnpd; do nsx "$r" nft flush chain inet filter "$i"; done
  nsx "$r" conntrack -F >/dev/null 2>&1 || true
}

restart_miniupnpd() { # router: stop it like a reboot (mappings and lease file gone), start it again
  stop_miniupnpd "$1"
  start_miniupnpd_again "$1"
}

start_miniupnpd_again() { # router: start a stopped miniupnpd (the service switched on; nothing flushed)
  local r="$1" dir="$STATE_ROOT/$NAME" client gw pid
  [[ -f "$dir/miniupnpd-$r.conf" ]] || die "no miniupnpd in $r of lab $NAME"
  pid="$(cat "$dir/miniupnpd-$r.pid" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && running "$pid"; then return 0; fi
  case "$r" in natA) client=alice ;; *) client=bob ;; esac
  gw="$(ip -n "$(ns "$r")" -4 -o addr show dev lan0 | awk '{print $4}' | cut -d/ -f1 | head -n1)"
  bg_in "$r" "$dir/miniupnpd-$r.log" miniupnpd -d -f "$dir/miniupnpd-$r.conf" -P "$dir/miniupnpd-$r.pid"
  wait_for "$UPNPD_READY_TENTHS" "miniupnpd" timeout 0.5 ip netns exec "$(ns "$client")" natpmpc -g "$gw" \
    || die "miniupnpd in $r did not come back within $((UPNPD_READY_TENTHS / 10)) s"
}

# ---------------------------------------------------------------- up
HOSTS_FILE_LINES=()
host_line() { HOSTS_FILE_LINES+=("$*"); }

# setup_site ROUTER TYPE WAN_IP NATNET OPENNET HOSTNAME:IDX...
#   builds router + LAN bridge + hosts; records host lines.
setup_site() {
  local r="$1" type="$2" wan="$3" natnet="$4" opennet="$5"; shift 5
  local base gw prefix pub
  if [[ "$type" == cone || "$type" == symmetric ]]; then
    base="${natnet%.*/*}"; prefix="${natnet#*/}"; pub="$wan"
  else
    base="${opennet%.*/*}"; prefix="${opennet#*/}"; pub=""
  fi
  local off="${opennet##*.}"; off="${off%/*}"
  [[ "$type" == cone || "$type" == symmetric ]] && off=0
  gw="$base.$((off + 1))"
  addr "$r" "$gw/$prefix" lan0
  local spec h idx ip
  for spec in "$@"; do
    h="${spec%%:*}"; idx="${spec##*:}"
    ip="$base.$((off + 1 + idx))"
    addr "$h" "$ip/$prefix" eth0
    up_if "$h" eth0
    route "$h" default via "$gw"
    host_line "$h $(ns "$h") $ip - - ${pub:-$ip}"
  done
  host_line "$r $(ns "$r") $wan - $gw $wan"
  if [[ "$type" == cone || "$type" == symmetric ]]; then
    SITE_SUBNET="$natnet"
  else
    SITE_SUBNET="$opennet"
  fi
  SITE_GW="$gw"
}

cmd_up() {
  local ta="$1" tb="$2" delay="$3" upnp="$4" owner="$5"
  local dir="$STATE_ROOT/$NAME"
  gc_labs
  if [[ -d "$dir" ]] || [[ -n "$(lab_namespaces "$NAME")" ]]; then
    echo "natlab: lab $NAME exists, removing it first" >&2
    down_lab "$NAME"
  fi
  mkdir -p "$dir"
  local st=""
  [[ "$owner" != 0 ]] && st="$(proc_start_time "$owner")"
  [[ "$owner" == 0 || -n "$st" ]] || die "owner pid $owner is not running"
  echo "$owner $st" >"$dir/owner"
  echo "natA=$ta natB=$tb delay_ms=$delay upnp=$upnp" >"$dir/topology"
  # From here on a failure must not leave a half-built lab behind.
  trap 'rc=$?; if [[ $rc != 0 ]]; then echo "natlab: up failed, removing lab $NAME" >&2; down_lab "$NAME"; fi' EXIT

  local h
  for h in $HOSTS; do mkns "$h"; done

  # internet segment: bridge br0 in the internet namespace
  veth internet rdv rendezvous eth0
  veth internet pub2 public2 eth0
  DELAY_MODE=none
  if [[ "$delay" != 0 ]]; then
    if netem_supported; then DELAY_MODE=netem; else DELAY_MODE=userspace; fi
    echo "delay_mode=$DELAY_MODE" >>"$dir/topology"
  fi
  wan_link natA "$delay"
  wan_link natB "$delay"
  veth internet cgnat cgnat wan0
  bridge internet br0 rdv pub2 natA natB cgnat
  addr internet "$INET_IP/24" br0
  addr rendezvous "$RDV_IP/24" eth0; addr rendezvous "$RDV_IP2/24" eth0; up_if rendezvous eth0
  addr public2 "$PUB2_IP/24" eth0; up_if public2 eth0
  addr natA "$NATA_WAN/24" wan0; up_if natA wan0
  addr natB "$NATB_WAN/24" wan0; up_if natB wan0
  addr cgnat "$CGNAT_WAN/24" wan0; up_if cgnat wan0
  for h in internet rendezvous public2 natA natB cgnat; do public_routes "$h"; done

  # LANs: every router has a bridge lan0; hosts have eth0
  veth natA alice alice eth0
  veth natA carol carol eth0
  veth natB bob bob eth0
  veth cgnat home home wan0
  veth home dave dave eth0
  bridge natA lan0 alice carol
  bridge natB lan0 bob
  bridge cgnat lan0 home
  bridge home lan0 dave

  host_line "internet $(ns internet) $INET_IP - - $INET_IP"
  host_line "rendezvous $(ns rendezvous) $RDV_IP $RDV_IP2 - $RDV_IP"
  host_line "public2 $(ns public2) $PUB2_IP - - $PUB2_IP"
  setup_site natA "$ta" "$NATA_WAN" 10.0.1.0/24 "$OPEN_A_NET" alice:1 carol:2
  local subnet_a="$SITE_SUBNET" gw_a="$SITE_GW"
  setup_site natB "$tb" "$NATB_WAN" 10.0.2.0/24 "$OPEN_B_NET" bob:1
  local subnet_b="$SITE_SUBNET" gw_b="$SITE_GW"

  # carrier-grade NAT: cgnat (ISP, WAN on the internet) -> 100.64.0.0/24 -> home router -> dave
  addr cgnat 100.64.0.1/24 lan0
  addr home 100.64.0.2/24 wan0; up_if home wan0
  route home default via 100.64.0.1
  addr home 10.0.3.1/24 lan0
  addr dave 10.0.3.2/24 eth0; up_if dave eth0
  route dave default via 10.0.3.1
  host_line "cgnat $(ns cgnat) $CGNAT_WAN - 100.64.0.1 $CGNAT_WAN"
  host_line "home $(ns home) 100.64.0.2 - 10.0.3.1 $CGNAT_WAN"
  host_line "dave $(ns dave) 10.0.3.2 - - $CGNAT_WAN"

  local ua=0 ub=0
  [[ "$upnp" == natA || "$upnp" == both ]] && ua=1
  [[ "$upnp" == natB || "$upnp" == both ]] && ub=1
  router_rules natA "$ta" "$ua"
  router_rules natB "$tb" "$ub"
  router_rules cgnat cone 0
  router_rules home cone 0

  printf '%s\n' "${HOSTS_FILE_LINES[@]}" >"$dir/hosts.tmp"

  # public STUN responder on rendezvous (also used by miniupnpd's reserved-address workaround)
  bg_in rendezvous "$dir/stun.log" "$PY" "$SCRIPT_DIR/lab/stun_server.py" "$RDV_IP" "$RDV_IP2" "$STUN_PORT" "$STUN_ALT_PORT"
  if [[ "$ua" == 1 || "$ub" == 1 ]]; then
    wait_for "$STUN_READY_TENTHS" "stun" grep -q "stun ready" "$dir/stun.log" \
      || die "STUN responder on rendezvous did not start: $(cat "$dir/stun.log")"
  fi
  [[ "$ua" == 1 ]] && start_miniupnpd natA alice "$gw_a" "$subnet_a"
  [[ "$ub" == 1 ]] && start_miniupnpd natB bob "$gw_b" "$subnet_b"

  # hosts file appears last: its presence means "lab is up"
  mv "$dir/hosts.tmp" "$dir/hosts"
  trap - EXIT
  echo "lab $NAME up: natA=$ta natB=$tb delay=${delay}ms upnp=$upnp (state $dir)"
  printf '  %-10s %-20s %-15s %-15s %-15s %s\n' host netns ip ip2 lan seen-from-internet
  local line
  for line in "${HOSTS_FILE_LINES[@]}"; do
    # shellcheck disable=SC2086
    printf '  %-10s %-20s %-15s %-15s %-15s %s\n' $line
  done
  echo "  hand use: $0 --name $NAME exec alice -- ip addr"
}

# ---------------------------------------------------------------- status
cmd_status() {
  local d lab
  local any=0
  if [[ -d "$STATE_ROOT" ]]; then
    for d in "$STATE_ROOT"/*/; do
      [[ -d "$d" ]] || continue
      any=1
      lab="$(basename "$d")"
      local owner="manual" state="up"
      [[ -f "$d/owner" ]] && owner="pid $(awk '{print $1}' "$d/owner")"
      [[ "$owner" == "pid 0" ]] && owner="manual"
      owner_alive "$d" || owner+=" (dead: run gc)"
      [[ -f "$d/hosts" ]] || state="incomplete"
      echo "lab $lab: $state, $(cat "$d/topology" 2>/dev/null || echo 'no topology'), owner $owner"
      echo "  namespaces: $(lab_namespaces "$lab" | tr '\n' ' ')"
      local r
      for r in natA natB; do
        if [[ -f "$d/miniupnpd-$r.pid" ]]; then echo "  miniupnpd in $r: pid $(cat "$d/miniupnpd-$r.pid" 2>/dev/null)"; fi
      done
    done
  fi
  # namespaces of labs without a state dir (should not happen; `down --name X` removes them)
  local orphans
  orphans="$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^[A-Za-z0-9_]+-internet$' | sed 's/-internet$//' || true)"
  for lab in $orphans; do
    [[ -d "$STATE_ROOT/$lab" ]] || { any=1; echo "lab $lab: namespaces without state dir (remove: $0 --name $lab down)"; }
  done
  [[ "$any" == 1 ]] || echo "no labs"
}

# ---------------------------------------------------------------- main
main() {
  local pos=() rest=() delay=0 upnp=none owner=0 all=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) [[ $# -ge 2 ]] || usage_err "--name needs a value"; NAME="$2"; shift 2 ;;
      --delay) [[ $# -ge 2 ]] || usage_err "--delay needs a value"; delay="$2"; shift 2 ;;
      --upnp) [[ $# -ge 2 ]] || usage_err "--upnp needs a value"; upnp="$2"; shift 2 ;;
      --owner) [[ $# -ge 2 ]] || usage_err "--owner needs a value"; owner="$2"; shift 2 ;;
      --all) all=1; shift ;;
      -h|--help) usage ;;
      --) shift; rest=("$@"); break ;;
      -*) usage_err "unknown option $1" ;;
      *) pos+=("$1"); shift ;;
    esac
  done
  [[ "$NAME" =~ ^[A-Za-z0-9_]{1,20}$ ]] || usage_err "bad --name '$NAME' (1-20 of [A-Za-z0-9_])"
  [[ ${#pos[@]} -ge 1 ]] || usage
  local cmd="${pos[0]}"
  case "$cmd" in
    up)
      [[ ${#pos[@]} -eq 3 ]] || usage_err "up needs exactly two NAT types"
      local t
      for t in "${pos[1]}" "${pos[2]}"; do
        [[ "$t" =~ ^(open|cone|symmetric|firewall)$ ]] || usage_err "unknown NAT type '$t'"
      done
      [[ "$delay" =~ ^[0-9]{1,5}$ ]] || usage_err "--delay must be milliseconds (0-99999)"
      [[ "$upnp" =~ ^(none|natA|natB|both)$ ]] || usage_err "--upnp must be natA, natB or both"
      [[ "$owner" =~ ^[0-9]+$ ]] || usage_err "--owner must be a pid"
      if [[ "$upnp" == natA || "$upnp" == both ]]; then
        [[ "${pos[1]}" =~ ^(cone|symmetric)$ ]] || usage_err "--upnp natA needs natA to be cone or symmetric"
      fi
      if [[ "$upnp" == natB || "$upnp" == both ]]; then
        [[ "${pos[2]}" =~ ^(cone|symmetric)$ ]] || usage_err "--upnp natB needs natB to be cone or symmetric"
      fi
      [[ "$(id -u)" == 0 ]] || die "must run as root"
      cmd_up "${pos[1]}" "${pos[2]}" "$delay" "$upnp" "$owner"
      ;;
    down)
      [[ ${#pos[@]} -eq 1 ]] || usage_err "down takes no arguments"
      [[ "$(id -u)" == 0 ]] || die "must run as root"
      if [[ "$all" == 1 ]]; then
        local d
        for d in "$STATE_ROOT"/*/; do [[ -d "$d" ]] && down_lab "$(basename "$d")"; done
      else
        down_lab "$NAME"
      fi
      ;;
    status) cmd_status ;;
    gc) [[ "$(id -u)" == 0 ]] || die "must run as root"; gc_labs ;;
    exec)
      [[ ${#pos[@]} -eq 2 ]] || usage_err "exec needs a host"
      [[ ${#rest[@]} -ge 1 ]] || usage_err "exec needs -- cmd..."
      [[ " $HOSTS " == *" ${pos[1]} "* ]] || usage_err "unknown host '${pos[1]}'"
      exec ip netns exec "$(ns "${pos[1]}")" "${rest[@]}"
      ;;
    miniupnpd-restart)
      [[ ${#pos[@]} -eq 2 && "${pos[1]}" =~ ^(natA|natB)$ ]] || usage_err "miniupnpd-restart needs natA or natB"
      [[ "$(id -u)" == 0 ]] || die "must run as root"
      restart_miniupnpd "${pos[1]}"
      ;;
    miniupnpd-start)
      [[ ${#pos[@]} -eq 2 && "${pos[1]}" =~ ^(natA|natB)$ ]] || usage_err "miniupnpd-start needs natA or natB"
      [[ "$(id -u)" == 0 ]] || die "must run as root"
      start_miniupnpd_again "${pos[1]}"
      ;;
    miniupnpd-stop)
      [[ ${#pos[@]} -eq 2 && "${pos[1]}" =~ ^(natA|natB)$ ]] || usage_err "miniupnpd-stop needs natA or natB"
      [[ "$(id -u)" == 0 ]] || die "must run as root"
      stop_miniupnpd "${pos[1]}"
      ;;
    *) usage_err "unknown command '$cmd'" ;;
  esac
}

main "$@"
