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
// deletes the host end, which takes the other with it. CreateEndpoint and DeleteEndpoint of an
// endpoint without published ports do no iptables work; DeleteEndpoint flushes the conntrack
// entries of the endpoint's IPv4 address (one filtered IPCTNL_MSG_CT_DELETE per direction,
// matched by the kernel). Join of an endpoint with published ports also sets hairpin mode on
// its bridge port, so that a container reaches its own published port.
//
// The driver keeps what it knows of each network (bridge name, ifindex, MTU, gateways) in
// memory only. After a restart, CreateNetwork with the same request adopts the existing bridge
// and rebuilds that memory, and [Driver.Reconcile] removes "cnm:" bridges and their veths that
// belong to no live network or endpoint.
//
// # Firewall
//
// Unless [Config].DisableIPTables, each network gets iptables rules in the host namespace,
// written with "iptables-restore --noflush" run inside that namespace: one transaction per
// CreateNetwork or DeleteNetwork (preceded by one iptables-save to see what is there), never a
// process per rule, and none on Join or Leave. The driver uses its own chains only:
//
//	filter FORWARD        -j CNM-USER                  first; made once, never touched again
//	                      -j CNM-FORWARD               right after CNM-USER
//	filter CNM-USER       the user's own rules, evaluated before the driver's
//	filter CNM-FORWARD    -j CNM-ISOLATION-1           always first
//	                      -j CNM-PORTS                 always second
//	                      then, per network on bridge BR:
//	                      -o BR -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//	                      -i BR -o BR -j ACCEPT        DROP when enable_icc=false
//	                      -i BR ! -o BR -j ACCEPT      outbound
//	                      ! -i BR -o BR -p icmp -j ACCEPT   routed gateway mode only
//	                      ! -i BR -o BR -j DROP        no unsolicited inbound
//	                      (an internal network: -i BR -o BR -j ACCEPT|DROP,
//	                      -i BR ! -o BR -j DROP, ! -i BR -o BR -j DROP)
//	filter CNM-ISOLATION-1  per network: -i BR ! -o BR -j CNM-ISOLATION-2
//	filter CNM-ISOLATION-2  per network: -o BR -j DROP
//	filter CNM-PORTS      per published port of endpoint E (address C, container port P):
//	                      -d C/32 ! -i BR -o BR -p tcp -m tcp --dport P -m comment --comment "cnm:E12" -j ACCEPT
//	nat POSTROUTING       -j CNM-POSTROUTING           appended once
//	nat PREROUTING        -m addrtype --dst-type LOCAL -j CNM-DNAT                    appended once
//	nat OUTPUT            ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j CNM-DNAT   appended once
//	nat CNM-DNAT          per published port: [-d HOSTIP/32] -p tcp -m tcp --dport H
//	                      -m comment --comment "cnm:E12" -j DNAT --to-destination C:P
//	nat CNM-POSTROUTING   per IPv4 subnet S of a network with masquerade:
//	                      -s S ! -o BR -j MASQUERADE
//
// Isolation is Docker's two-stage scheme: traffic that enters from a cnm bridge and leaves by
// another interface goes to CNM-ISOLATION-2, which drops it if that interface is a cnm
// bridge. A network costs two isolation rules, never one per pair of networks, so the ruleset
// is O(networks). A container joined to two networks reaches both, since its traffic is not
// forwarded by the host. Rules of different networks match disjoint traffic (each names its
// bridge with -i or -o), so their order across networks does not matter.
//
// Every per-network rule names the network's bridge with -i or -o, and that is how the driver
// finds a network's rules: CreateNetwork brings each chain's rules of the bridge to exactly
// the wanted list (no duplicates; a chain whose list differs in any way has them all rewritten
// in order), DeleteNetwork deletes them, and [Driver.Reconcile] deletes those of bridges that
// no longer exist. The chains and the jumps to them stay once made. The driver's chains are
// its own: rules a user adds there may be removed; CNM-USER is the place for them.
//
// A network that is not internal needs forwarding: CreateNetwork sets net.ipv4.ip_forward=1
// in the host namespace (only there) when it is 0, and in the same transaction that writes
// the rules, before, sets the FORWARD policy to DROP, as Docker does, so that turning
// forwarding on opens only the driver's networks. enable_icc=false needs br_netfilter, so
// that traffic between ports of one bridge goes through iptables:
// /proc/sys/net/bridge/bridge-nf-call-iptables must exist in the host namespace (else
// CreateNetwork fails with an error matching cnm.ErrNotSupported before any kernel work) and
// is set to 1 when it is 0. A missing iptables-save or iptables-restore fails CreateNetwork
// with an error matching cnm.ErrUnavailable, also before any kernel work.
//
// # Published ports
//
// CreateEndpoint publishes the ports of [drivers.CreateEndpointRequest].Ports with no proxy
// process: a DNAT per port in CNM-DNAT, reached for traffic to any local address from outside
// (PREROUTING), from the host itself (OUTPUT; not 127.0.0.0/8) and from containers (hairpin:
// the DNATed traffic goes back into the bridge, and the network's hairpin MASQUERADE,
// "-s S -o BR -m conntrack --ctstate DNAT -j MASQUERADE" in CNM-POSTROUTING, makes the reply
// return through the host), and an ACCEPT in CNM-PORTS, after isolation and ahead of the
// networks' DROPs. Every rule of an endpoint carries the comment "cnm:" and the first 12
// characters of its ID: that is how CreateEndpoint (converging, without duplicates),
// DeleteEndpoint and Reconcile (rules of endpoints the driver does not know) find them. Host
// ports are reserved in the driver (the same protocol and port on the same address, or on
// 0.0.0.0, is a conflict); ephemeral ones come from [Config].PortRange. The reservations live
// in memory and are rebuilt by CreateEndpoint with the bound ports after a restart. With ICC
// disabled, published ports are reached from outside the bridge only.
//
// Not done yet: ip6tables rules (IPv6 traffic is neither filtered nor isolated by the driver,
// and ports are published on IPv4 host addresses only).
//
// # Privilege and namespaces
//
// Everything needs CAP_NET_ADMIN in the host namespace ([Config].HostNetns). The driver keeps
// netlink sockets opened in the host namespace by New, and creates the sandbox end of a veth
// through the namespace descriptor in the [drivers.JoinRequest]. Only the firewall work enters
// the host namespace, through (*netns.NS).Do: to start iptables-save and iptables-restore
// (born there, waited for outside) and to read and write the sysctls. A [Driver] is safe for
// concurrent use and must be closed.
package bridge
