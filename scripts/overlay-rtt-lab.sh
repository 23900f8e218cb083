#!/usr/bin/env bash
# overlay-rtt-lab.sh: what each piece of an overlay's data path costs in round-trip time,
# measured by hand on two "hosts" (namespaces on an underlay bridge, as the overlay tests'
# lab): ping between the hosts on the underlay, and between two containers over a VXLAN
# (VNI 4096, static FDB and neighbour entries, learning off, as the overlay driver programs it)
# built three ways:
#   host-ns       the bridge and the VXLAN device in the host's namespace (flannel's layout);
#   per-net-ns    both in a namespace of the network's own (libnetwork's layout, and cnm's);
#   direct-vxlan  the VXLAN device itself in the container, no veth and no bridge: the floor
#                 of any VXLAN overlay;
#   macvlan       the VXLAN device in a namespace of the network's own, and a macvlan child of
#                 it (bridge mode) in the container in place of the veth and the bridge.
# Each round prints the average RTT in ms of N pings 2 ms apart (N=300 by default; INTERVAL
# sets the spacing in seconds), underlay before and after.
#
# It changes namespaces and links: run it only in a throwaway namespace, e.g.
#   ../shared/tools/nsrun -- ./scripts/overlay-rtt-lab.sh
set -e
INTERVAL=${INTERVAL:-0.002}
N=${N:-300}
ip netns add lab; ip netns add ha; ip netns add hb
ip -n lab link add ul type bridge; ip -n lab link set ul up
for h in a b; do
  ip link add eth0 netns h$h type veth peer name ul-$h netns lab
  ip -n lab link set ul-$h master ul up
  ip -n h$h link set lo up; ip -n h$h link set eth0 up
done
ip -n ha addr add 192.0.2.11/24 dev eth0 nodad 2>/dev/null || ip -n ha addr add 192.0.2.11/24 dev eth0
ip -n hb addr add 192.0.2.12/24 dev eth0 nodad 2>/dev/null || ip -n hb addr add 192.0.2.12/24 dev eth0
sleep 0.5
pingrtt() { ip netns exec $1 ping -n -q -c $N -i $INTERVAL $2 | sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p'; }
# each host: container c$h; variant "host": vxlan+bridge in host ns; "netns": in ov$h ns
setup() { # $1 variant
  for h in a b; do
    if [ $h = a ]; then me=192.0.2.11; peer=192.0.2.12; ip=10.9.0.2; pip=10.9.0.3; mac=02:42:0a:09:00:02; pmac=02:42:0a:09:00:03
    else me=192.0.2.12; peer=192.0.2.11; ip=10.9.0.3; pip=10.9.0.2; mac=02:42:0a:09:00:03; pmac=02:42:0a:09:00:02; fi
    ip netns add c$h
    if [ $1 = direct ]; then
      ip -n h$h link add vx1 type vxlan id 4096 local $me dstport 4789 nolearning proxy
      ip -n h$h link set vx1 netns c$h
      ip -n c$h link set vx1 address $mac mtu 1450 up; ip -n c$h link set lo up
      ip -n c$h addr add $ip/24 dev vx1
      ip netns exec c$h bridge fdb add $pmac dev vx1 dst $peer self permanent
      ip -n c$h neigh add $pip lladdr $pmac dev vx1 nud permanent
      continue
    fi
    if [ $1 = macvlan ]; then
      ip netns add ov$h; ip -n ov$h link set lo up
      ip -n h$h link add vx1 type vxlan id 4096 local $me dstport 4789 nolearning proxy
      ip -n h$h link set vx1 netns ov$h
      ip -n ov$h link set vx1 mtu 1450 up
      ip -n ov$h link add eth0 link vx1 type macvlan mode bridge
      ip -n ov$h link set eth0 netns c$h
      ip -n c$h link set eth0 address $mac mtu 1450
      ip -n c$h addr add $ip/24 dev eth0; ip -n c$h link set eth0 up; ip -n c$h link set lo up
      ip netns exec ov$h bridge fdb add $pmac dev vx1 dst $peer self permanent
      ip -n ov$h neigh add $pip lladdr $pmac dev vx1 nud permanent
      ip -n c$h neigh add $pip lladdr $pmac dev eth0 nud permanent 2>/dev/null || true
      continue
    fi
    case $1 in
    host) ns=h$h;;
    netns) ns=ov$h; ip netns add ov$h; ip -n ov$h link set lo up;;
    esac
    ip -n $ns link add br0 type bridge; ip -n $ns link set br0 mtu 1450 up
    ip -n h$h link add vx1 type vxlan id 4096 local $me dstport 4789 nolearning proxy
    [ $ns = h$h ] || ip -n h$h link set vx1 netns $ns
    ip -n $ns link set vx1 mtu 1450 master br0
    ip -n $ns link set dev vx1 type bridge_slave learning off
    ip -n $ns link set vx1 up
    ip -n $ns link add ve$h mtu 1450 type veth peer name eth0 netns c$h
    ip -n $ns link set ve$h master br0 up
    ip -n c$h link set eth0 address $mac mtu 1450
    ip -n c$h addr add $ip/24 dev eth0; ip -n c$h link set eth0 up; ip -n c$h link set lo up
    ip netns exec $ns bridge fdb add $pmac dev vx1 dst $peer self permanent
    ip -n $ns neigh add $pip lladdr $pmac dev vx1 nud permanent
    ip -n c$h neigh add $pip lladdr $pmac dev eth0 nud permanent 2>/dev/null || true
  done
}
teardown() { for h in a b; do ip -n c$h link del vx1 2>/dev/null || true; ip -n ov$h link del vx1 2>/dev/null || true; ip netns del c$h; ip -n h$h link del vx1 2>/dev/null || true; ip -n h$h link del br0 2>/dev/null || true; ip -n h$h link del ve$h 2>/dev/null || true; ip netns del ov$h 2>/dev/null || true; done; }
for round in $(seq ${ROUNDS:-5}); do
  u=$(pingrtt hb 192.0.2.11)
  setup host; ip netns exec ca ping -c 2 -i 0.2 -q 10.9.0.3 >/dev/null; hh=$(pingrtt ca 10.9.0.3); teardown
  setup netns; ip netns exec ca ping -c 2 -i 0.2 -q 10.9.0.3 >/dev/null; n=$(pingrtt ca 10.9.0.3); teardown
  setup direct; ip netns exec ca ping -c 2 -i 0.2 -q 10.9.0.3 >/dev/null; d=$(pingrtt ca 10.9.0.3); teardown
  setup macvlan; ip netns exec ca ping -c 2 -i 0.2 -q 10.9.0.3 >/dev/null; m=$(pingrtt ca 10.9.0.3); teardown
  u2=$(pingrtt hb 192.0.2.11)
  echo "round $round underlay $u host-ns $hh per-net-ns $n direct-vxlan $d macvlan $m underlay2 $u2"
done
