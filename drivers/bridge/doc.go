// Package bridge is the Linux bridge network driver: each network is a bridge in the host
// namespace, and each joined endpoint a veth pair from that bridge into the sandbox.
//
// # What it makes in the kernel
//
// CreateNetwork makes one bridge per network, named by [NetworkOptions].BridgeName or by
// default "br-" and the first 12 characters of the network ID (br-1a2b3c4d5e6f). The bridge
// gets the network's MTU, the alias (IFLA_IFALIAS, shown by "ip link") "cnm:" and the full
// network ID, each subnet's gateway as an address with the subnet's length, and is set up.
// The alias is how the driver tells its bridges from everyone else's: a link of the wanted
// name without the network's alias is a conflict and is never touched. (One exception: a
// bridge with the network's default name and no alias at all, which a crash between creating
// the bridge and setting its alias leaves, is adopted; the kernel ignores an alias in the
// create message.)
//
// Join makes a veth pair in one netlink message: the host end "veth" and the first 11
// characters of the endpoint ID (veth89abcdef012, 15 bytes), up and enslaved to the bridge, and
// the sandbox end, with the requested name (eth0), MAC and the network's MTU, created directly
// in the sandbox's namespace. The sandbox adds the addresses and routes and sets it up. Leave
// deletes the host end, which takes the other with it. CreateEndpoint and DeleteEndpoint do no
// kernel work.
//
// The driver keeps what it knows of each network (bridge name, ifindex, MTU, gateways) in
// memory only. After a restart, CreateNetwork with the same request adopts the existing bridge
// and rebuilds that memory, and [Driver.Reconcile] removes "cnm:" bridges and their veths that
// belong to no live network or endpoint.
//
// # No firewall rules yet
//
// The driver writes no iptables or nftables rules and does not touch sysctls: there is no NAT
// to the outside, no port publishing, and no inter-container-communication switch. Endpoints
// of one network reach each other and the gateway through the bridge. Networks are kept apart
// only because forwarding between the bridges is left off in the host namespace
// (net.ipv4.ip_forward=0); with forwarding on, they can route to each other. The issue "bridge
// driver: Docker's full semantics" adds NAT, ICC and isolation rules.
//
// # Privilege and namespaces
//
// Everything needs CAP_NET_ADMIN in the host namespace ([Config].HostNetns). The driver never
// changes a thread's namespace: it keeps netlink sockets opened in the host namespace by New,
// and creates the sandbox end of a veth through the namespace descriptor in the
// [drivers.JoinRequest]. A [Driver] is safe for concurrent use and must be closed.
package bridge
