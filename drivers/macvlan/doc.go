// Package macvlan is cnm's macvlan network driver, Docker's
// `docker network create -d macvlan -o parent=eth0 -o macvlan_mode=bridge`: each container
// gets a macvlan link on a host interface (the parent), with its own MAC address, and sits
// directly on the parent's LAN, with no bridge and no NAT. Addresses come from IPAM as on that
// LAN (subnet, gateway, ip-range and aux addresses of the network); the gateway is the LAN's
// router.
//
// Options are typed ([NetworkOptions]: Parent, Mode, MTU) or Docker's labels, parsed once by
// [ParseNetworkOptions]: "parent", "macvlan_mode" (bridge, the default; private; vepa;
// passthru) and "com.docker.network.driver.mtu" (default: the parent's MTU).
//
// # What the driver makes
//
// Join creates the container's link with one netlink message directly in the sandbox's
// namespace: a macvlan link on the parent (looked up in the host namespace), named as the
// sandbox asks, with the endpoint's MAC (given, or 02:42 followed by the IPv4 address, as
// Docker does) and the network's MTU. Nothing is created in the host namespace and nothing is
// moved. Leave deletes the link.
//
// In the host namespace, the driver makes links only in two cases, each marked with an alias
// so that DeleteNetwork and [Driver.Reconcile] remove only what it made:
//   - A parent named like "eth0.10" means VLAN 10 on eth0. When that sub-interface is missing,
//     the driver creates it (alias "cnm-macvlan-vlan") and removes it with the last network
//     that uses it; a sub-interface it did not create is never removed. A kernel without
//     802.1q (no "vlan" link type, module 8021q) refuses it: CreateNetwork then fails with an
//     error matching drivers.ErrNotSupported that says the kernel lacks 802.1q, and nothing is
//     left behind. cnm's test machine has such a kernel.
//   - A network without a parent is internal: its containers reach only each other. Docker
//     makes a dummy link as the parent; kernels without dummy links exist (cnm's test machine
//     is one), so the driver makes a veth pair instead, "mvp-" and "mvq-" followed by the first
//     11 characters of the network ID, both up: mvp-… (alias "cnm-macvlan:" and the network
//     ID) is the parent and mvq-… only gives it carrier. With bridge mode the containers reach
//     each other inside the kernel; nothing reaches the host or beyond.
//
// # What the kernel allows and forbids
//
//   - The host cannot reach its own macvlan containers through the parent, nor they the host's
//     address on it: the kernel passes frames between a parent and its macvlan links only
//     towards the wire. Give the host a macvlan link of its own on the same parent if it must
//     talk to its containers.
//   - Bridge mode: containers on one parent reach each other inside the kernel. Private mode:
//     never, not even through the LAN. VEPA: only through a switch that sends frames back out of
//     the port they came in on (hairpin, reflective relay); the tests show both with a Linux
//     bridge as the LAN. Passthru: one network alone on the parent, one joined container at a
//     time (the kernel refuses a second link, which Join reports as a conflict).
//   - A parent must exist and be up, must not be a bridge (a cnm bridge included) or a port of
//     one (or enslaved to any master); the MTU may not exceed the parent's. Two networks on one
//     parent may not have overlapping subnets; passthru may not share its parent. All of these
//     are refused by CreateNetwork with typed errors before anything is made.
//   - Many NICs accept only a few unicast MACs before going promiscuous, and Wi-Fi access points
//     usually drop frames from MACs that did not associate: macvlan is for wired LANs.
//
// # Lifecycle
//
// [New] opens the host namespace (Config.HostNetns) and netlink sockets in it; [Driver.Close]
// releases them and leaves the kernel alone. State is in memory and rebuilt by CreateNetwork
// on restart, which adopts the sub-interfaces and veths the driver made before. The driver is
// safe for concurrent use; CreateNetwork, DeleteNetwork and Reconcile run one at a time.
//
// It needs Linux and CAP_NET_ADMIN; off Linux, New fails with an error matching
// drivers.ErrNotSupported.
package macvlan
