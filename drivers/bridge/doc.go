// Package bridge is the Linux bridge network driver: each network is a bridge in the host
// namespace, and each joined endpoint a veth pair from that bridge into the sandbox.
//
// # What it makes in the kernel
//
// CreateNetwork makes one bridge per network, named by [NetworkOptions].BridgeName or by
// default "br-" and the first 12 characters of the network ID (br-1a2b3c4d5e6f). The bridge
// gets the network's MTU, the alias (IFLA_IFALIAS, shown by "ip link") "cnm:" and the full
// network ID, each subnet's gateway as an address with the subnet's length (IPv6 ones
// without duplicate address detection, and then fe80::1/64 too, so that neighbour discovery
// for traffic forwarded to the containers does not wait for the kernel's own link-local
// address to leave its tentative state), and is set up.
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
// endpoint without published ports do no iptables work; DeleteEndpoint starts flushing the
// conntrack entries of the endpoint's IPv4 address (one filtered IPCTNL_MSG_CT_DELETE per
// direction, matched by the kernel) and of its IPv6 address (a dump of the IPv6 table and a
// delete per entry of that address: the kernel's filtered IPv6 delete matches inverted, up to
// Linux 6.18 at least, and would flush every other entry). The flush runs on a goroutine the
// driver owns, after DeleteEndpoint returns (each filtered delete walks the machine's whole
// conntrack table); a CreateEndpoint of the same address waits for it, and Close for all. Join of an endpoint with published ports also
// sets hairpin mode on its bridge port, so that a container reaches its own published port.
//
// [Driver.JoinHostSide] is the same veth pair with the sandbox end left in the host namespace
// under a name the caller picks, for a caller that moves it into the sandbox itself (Docker,
// when package drivers/remote/server serves the driver as a Docker plugin).
//
// The driver keeps what it knows of each network (bridge name, ifindex, MTU, gateways) in
// memory only. After a restart, CreateNetwork with the same request adopts the existing bridge
// and rebuilds that memory, and [Driver.Reconcile] removes "cnm:" bridges and their veths that
// belong to no live network or endpoint.
//
// # Firewall
//
// [Config].Firewall picks the backend that writes the rules: [FirewallIPTables] (the zero
// value, for now), described in this section, or [FirewallNftables], described in the next;
// [FirewallAuto] picks nftables when the kernel answers nf_tables netlink requests in the host
// namespace, else iptables. Both give the same semantics (NAT, routed mode, ICC, isolation,
// internal networks, published ports, hairpin), proved by the same wire tests. With
// [Config].DisableIPTables (Docker's --iptables=false) neither writes anything.
//
// Unless [Config].DisableIPTables, each network gets iptables rules in the host namespace,
// written with "iptables-restore --noflush" run inside that namespace: one transaction per
// CreateNetwork or DeleteNetwork, never a process per rule, and none on Join or Leave. The
// driver uses its own chains only, and gives each network, and each endpoint with published
// ports, chains of its own, so that what one of them costs does not grow with how many exist:
//
//	filter FORWARD        -j CNM-USER                  first; made once, never touched again
//	                      -j CNM-FORWARD               right after CNM-USER
//	filter CNM-USER       the user's own rules, evaluated before the driver's
//	filter CNM-FORWARD    -j CNM-ISOLATION-1           always first
//	                      -j CNM-PORTS                 always second
//	                      -j CNM-FORWARD-0 ... -j CNM-FORWARD-f   then its 16 buckets
//	filter CNM-FORWARD-b  per network on bridge BR whose bucket is b:
//	                      -i BR -j CNM-N-BR
//	                      -o BR -j CNM-N-BR
//	filter CNM-N-BR       the network's own chain; it decides every packet jumped to it:
//	                      -o BR -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//	                      -i BR -o BR -j ACCEPT        DROP when enable_icc=false
//	                      -i BR ! -o BR -j ACCEPT      outbound
//	                      ! -i BR -o BR -p icmp -j ACCEPT   routed gateway mode only
//	                      ! -i BR -o BR -j DROP        no unsolicited inbound
//	                      (an internal network: -i BR -o BR -j ACCEPT|DROP,
//	                      -i BR ! -o BR -j DROP, ! -i BR -o BR -j DROP)
//	filter CNM-ISOLATION-1  -j CNM-ISOLATION-1-0 ... -f; in bucket b, per network: -i BR ! -o BR -j CNM-ISOLATION-2
//	filter CNM-ISOLATION-2  -j CNM-ISOLATION-2-0 ... -f; in bucket b, per network: -o BR -j DROP
//	filter CNM-PORTS      -j CNM-PORTS-0 ... -f; in bucket b, per endpoint E with published
//	                      ports, address C: -d C/32 -j CNM-E-E12
//	filter CNM-E-E12      the endpoint's own chain; per published port (container port P):
//	                      -d C/32 ! -i BR -o BR -p tcp -m tcp --dport P -m comment --comment "cnm:E12" -j ACCEPT
//	nat POSTROUTING       -j CNM-POSTROUTING           appended once
//	nat PREROUTING        -m addrtype --dst-type LOCAL -j CNM-DNAT                    appended once
//	nat OUTPUT            ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j CNM-DNAT   appended once
//	nat CNM-DNAT          -j CNM-DNAT-0 ... -f; in bucket b, per endpoint with published ports: -j CNM-E-E12
//	nat CNM-E-E12         per published port: [-d HOSTIP/32] -p tcp -m tcp --dport H
//	                      -m comment --comment "cnm:E12" -j DNAT --to-destination C:P
//	nat CNM-POSTROUTING   -j CNM-POSTROUTING-0 ... -f; in bucket b, per IPv4 subnet S of a
//	                      network that is not internal: -s S -j CNM-N-BR
//	nat CNM-N-BR          the network's own chain; per IPv4 subnet S:
//	                      -s S ! -o BR -j MASQUERADE [--random-fully]   when masquerading
//	                      -s S -o BR -m conntrack --ctstate DNAT -j MASQUERADE   hairpin
//
// Buckets. The per-network and per-endpoint rules of each shared chain are spread over 16
// bucket chains, the shared chain's name and a hex digit ("CNM-FORWARD-7"), to which the shared
// chain jumps in turn: a network's go to the bucket of an FNV-1a hash of its bridge name, an
// endpoint's to that of its short ID. Deleting a rule by its text ("-D") makes iptables look it
// up in its chain, so the buckets keep a delete from growing with how many networks or
// endpoints exist (k/16 rules to look through instead of k); a packet crosses 16 more jumps
// per shared chain. Converging moves rules of the layout before buckets (in the shared chains
// themselves) into their buckets.
//
// CNM-N-BR is "CNM-N-" and the bridge name (at most 21 bytes); CNM-E-E12 is "CNM-E-" and the
// first 12 characters of the endpoint ID. Such a chain exists in a table only when it has
// rules there.
//
// IPv6. A network with IPv6 subnets (dual-stack) also gets rules in the IPv6 tables, written
// with "ip6tables-restore --noflush" in the same host namespace, by the same planner and with
// the same layout: CNM-USER and CNM-FORWARD first in the ip6 FORWARD, CNM-ISOLATION-1/2,
// CNM-PORTS and CNM-DNAT with their jumps (OUTPUT's leaves out ::1/128), the jumps -i/-o BR
// from CNM-FORWARD to CNM-N-BR, the same filter rules in CNM-N-BR (ICC, internal, no
// unsolicited inbound), and in nat, per IPv6 subnet S6, when masquerading "-s S6 ! -o BR -j
// MASQUERADE [--random-fully]", and the hairpin "-s S6 -o BR -m conntrack --ctstate DNAT -j
// MASQUERADE", in CNM-N-BR, jumped to by "-s S6 -j CNM-N-BR" from CNM-POSTROUTING
// (masquerading is on for IPv6 unless enable_ip_masquerade=false, as Docker masquerades its
// ULA subnets; gateway_mode_ipv4=routed is IPv4's only). A network without IPv6 subnets gets
// its filter rules in the IPv6 tables too (isolation, ICC, CNM-N-BR; no nat rule, no sysctl or
// FORWARD policy touched), when ip6tables is there, as Docker writes them: its bridge still
// carries IPv6 link-local traffic, which br_netfilter hands to ip6tables, and once a
// dual-stack network has set the IPv6 FORWARD policy to DROP only those rules let it through.
// That costs such a network one ip6tables-restore per create and delete, and is best effort: a
// failure there (ip6tables fails where the kernel has no IPv6, and then nothing forwards IPv6
// either) is logged as a warning and fails neither CreateNetwork nor DeleteNetwork.
//
// Isolation is Docker's two-stage scheme: traffic that enters from a cnm bridge and leaves by
// another interface goes to CNM-ISOLATION-2, which drops it if that interface is a cnm
// bridge. A network costs two isolation rules, never one per pair of networks, so the ruleset
// is O(networks). A container joined to two networks reaches both, since its traffic is not
// forwarded by the host. Rules of different networks match disjoint traffic (each names its
// bridge with -i or -o), so their order across networks does not matter.
//
// How rules are written. Every rule of a network in a shared chain names its bridge with -i or
// -o, or jumps to its chain; the jumps to an endpoint's chains name them: that is how the
// driver finds them, after a restart too. For what it made in this process, the driver trusts
// its memory:
//   - CreateNetwork of a network it knew nothing of, whose bridge it has just created (once the
//     process has converged the shared chains and jumps, which the first CreateNetwork does), is
//     one iptables-restore with no iptables-save: "-N CNM-N-BR" in each table, its rules, and
//     its rules in the shared chains, all appended. CreateEndpoint of an endpoint it knew
//     nothing of does the same with CNM-E-E12. Nothing is matched against what exists, so the
//     cost does not grow with the number of networks or endpoints. If a chain exists already
//     ("-N" fails, and the kernel applies none of the transaction), it converges instead.
//   - DeleteNetwork and DeleteEndpoint of what it made delete exactly those rules from the
//     shared chains (jumps and isolation rules), then flush and delete ("-F", "-X") the own
//     chains, in one iptables-restore. If that fails (the tables are not as made), it converges
//     instead.
//   - Otherwise (after a restart, for an adopted bridge, for a network or endpoint created
//     again, and on the first CreateNetwork) it converges from one iptables-save: an own chain
//     that differs in any way is rewritten in order, and in each shared chain the object's rules
//     are left alone when they are exactly the wanted ones, else deleted and the wanted ones
//     appended. So there are no duplicates, and rules of the older flat layout (naming the
//     bridge, or tagged "cnm:E12", in the shared chains) are replaced. [Driver.Reconcile]
//     removes, after one iptables-save, the rules and chains of bridges that no longer exist and
//     of endpoints the driver does not know.
//
// The shared chains and the jumps to them stay once made; converging repairs them. The driver's
// chains are its own: rules a user adds there may be removed; CNM-USER is the place for them.
//
// A network that is not internal needs forwarding: CreateNetwork sets net.ipv4.ip_forward=1
// (and net.ipv6.conf.all.forwarding=1 for a network with IPv6 subnets) in the host namespace
// (only there) when it is 0, and in the same transaction that writes that family's rules,
// before, sets that family's FORWARD policy to DROP, as Docker does, so that turning
// forwarding on opens only the driver's networks. enable_icc=false needs br_netfilter, so
// that traffic between ports of one bridge goes through iptables:
// /proc/sys/net/bridge/bridge-nf-call-iptables must exist in the host namespace (else
// CreateNetwork fails with an error matching cnm.ErrNotSupported before any kernel work) and
// is set to 1 when it is 0 (and bridge-nf-call-ip6tables, for a network with IPv6 subnets). A
// missing iptables-save or iptables-restore, or, for a network with IPv6 subnets, a missing
// ip6tables-save or ip6tables-restore, fails CreateNetwork with an error matching
// cnm.ErrUnavailable that names them, also before any kernel work. The IPv4 transaction comes
// first; if the IPv6 one then fails, CreateNetwork removes the IPv4 rules it wrote (and puts
// back a FORWARD policy it changed) and the bridge it made, before any sysctl is written.
// DeleteNetwork and [Driver.Reconcile] remove the IPv6 rules as they do the IPv4 ones (after
// a restart, from one ip6tables-save, when ip6tables is there).
//
// # The nftables backend
//
// [FirewallNftables] talks to nf_tables over netlink (github.com/google/nftables), one batch
// per CreateNetwork, DeleteNetwork, CreateEndpoint with ports or DeleteEndpoint with ports,
// and never starts a process (asserted by its tests and benchmarks with no iptables binary in
// PATH). Everything is in the driver's own table, "inet cnm" (IPv4 and IPv6 at once), whose
// rules are made once; a network or a published port is only elements of its sets and maps:
//
//	set bridges       ifname           per network: BR
//	set same          ifname . ifname  per network: BR . BR
//	set icc-off       ifname           per network with enable_icc=false: BR
//	set internal      ifname           per internal network: BR
//	set routed        ifname           per network with gateway_mode_ipv4=routed: BR
//	set masq4         ifname           per network whose IPv4 traffic is masqueraded: BR
//	set masq6         ifname           per network whose IPv6 traffic is masqueraded: BR
//	set forward-drop  nf_proto         ipv4, ipv6: the families whose forwarding cnm turned on
//	set ports4        ipv4_addr . inet_proto . inet_service
//	                  per published container port: C . tcp . P, comment "cnm:E12"
//	map dnat4         ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//	                  per port published on one host address: HOSTIP . tcp . H : C . P, comment "cnm:E12"
//	map dnat4-any     inet_proto . inet_service : ipv4_addr . inet_service
//	                  per port published on all host addresses: tcp . H : C . P, comment "cnm:E12"
//	set ports6, map dnat6, map dnat6-any
//	                  the same for IPv6 (ipv6_addr): a binding without a host address is
//	                  published in each family the endpoint has an address of
//	chain forward     filter hook forward priority filter - 10; policy accept:
//	                  jump user
//	                  iifname . oifname @same ct status dnat meta mark set mark | MASQ   hairpin
//	                  iifname . oifname @same iifname @icc-off drop
//	                  iifname . oifname @same accept
//	                  iifname @bridges oifname @bridges drop        isolation
//	                  iifname @internal drop
//	                  oifname @internal drop
//	                  iifname @masq4 meta nfproto ipv4 meta mark set mark | MASQ accept
//	                  iifname @masq6 meta nfproto ipv6 meta mark set mark | MASQ accept
//	                  iifname @bridges accept                       outbound
//	                  oifname @bridges ct state established,related accept
//	                  oifname @bridges ip daddr . meta l4proto . th dport @ports4 accept
//	                  oifname @bridges ip6 daddr . meta l4proto . th dport @ports6 accept
//	                  oifname @routed meta nfproto ipv4 meta l4proto icmp accept
//	                  oifname @bridges drop                         no unsolicited inbound
//	                  meta nfproto @forward-drop drop
//	chain user        the user's own rules, evaluated first; made once, never touched
//	chain postrouting nat hook postrouting priority srcnat: meta mark & MASQ != 0 masquerade
//	chain prerouting  nat hook prerouting priority dstnat: fib daddr type local jump published
//	chain output      nat hook output priority dstnat: ip daddr != 127.0.0.0/8 fib daddr type local jump published
//	                  ip6 daddr != ::1 fib daddr type local jump published
//	chain published   dnat ip to ip daddr . meta l4proto . th dport map @dnat4
//	                  dnat ip to meta l4proto . th dport map @dnat4-any
//	                  dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6
//	                  dnat ip6 to meta l4proto . th dport map @dnat6-any
//
// MASQ is [NftMasqMark]; every "accept" of forward also sets [NftAcceptMark] (see coexistence
// below). The rules filter IPv4 and IPv6 alike, so a network without IPv6 subnets has its
// IPv6 traffic filtered too. Masquerading is decided in forward, by the bridge a packet
// comes from, where the iptables backend matches the network's subnets: the same for the
// network's containers, but traffic of the host itself with a source address in a network's
// subnet (its gateway address) is not masqueraded. Creating or deleting a network or a port
// adds or removes elements in hash sets only: no rule, chain or jump, so a batch costs the
// same however many exist (a batch that adds a jump or goto makes the kernel walk the whole
// table to check for loops, which is why networks have no chains of their own).
//
// How it converges. The first operation of a process, and any operation after a failed batch,
// also makes the table and its sets and maps, and flushes and writes its base chains again in
// the same batch (the user chain is made if missing and never flushed). CreateNetwork adds the
// network's elements (adding one that exists changes nothing); when the network was known to
// be absent that is all, with nothing read first, and otherwise (a restart, an adopted
// bridge) it also lists the bridge sets and deletes the bridge's elements the network no
// longer wants (an option changed). DeleteNetwork deletes exactly the elements it added, with
// nothing read first; if that batch fails (something was removed by hand, or after a
// restart), it lists the sets and removes what is there. CreateEndpoint of a new endpoint adds
// its elements; of a known one (or after a restart) it lists the port sets and replaces the
// elements tagged with the endpoint or holding the keys it wants. [Driver.Reconcile] removes
// the elements of bridges that no longer exist, and the port elements tagged with endpoints
// the driver does not know (putting back, with the right tag, an element a live endpoint
// wants), and reports each.
//
// Forwarding. As with iptables, CreateNetwork turns on a family's forwarding when it is off
// and the network needs it; in the same batch it adds that family to forward-drop, so that
// turning forwarding on opens only the driver's networks (the iptables backend sets the
// FORWARD policy to DROP instead). The element stays.
//
// Coexistence. A packet is forwarded only if every base chain on the forward hook accepts it,
// the iptables compatibility tables of iptables-nft ("ip filter" FORWARD) included. So a host
// where another program set the iptables FORWARD policy to DROP (Docker, or a firewall) would
// drop the driver's traffic after cnm's chain accepted it. The backend therefore, on the first
// CreateNetwork of a process and whenever it converges, puts one rule first in the FORWARD
// chain of "ip filter" and "ip6 filter" when such a chain exists, unless it is there:
//
//	-A FORWARD -m mark --mark 0x10000000/0x10000000 -m comment --comment "cnm: accept what the cnm nftables table accepted" -j ACCEPT
//
// which accepts exactly the packets cnm's forward chain accepted (it runs before, at priority
// filter - 10, and marks them). Nothing else of those tables is touched. A FORWARD chain made
// after that (iptables-nft started later) gets the rule at the next restart; iptables-legacy
// tables are not visible over nf_tables netlink, so a legacy FORWARD policy DROP still cuts
// the networks off. A program that needs the mark bits 0x10000000 or 0x20000000 for itself
// conflicts with cnm.
//
// Choosing a backend. [FirewallIPTables] (the zero Config.Firewall) stays the default, so that
// a host keeps the rules it had. [FirewallAuto] picks nftables when the kernel answers on
// nf_tables netlink and no iptables-legacy rules are in use in the host namespace, and
// iptables otherwise: a legacy table with a rule of its own, or a built-in chain whose policy
// is not ACCEPT (Docker with iptables-legacy sets FORWARD to DROP), would cut cnm's networks
// off, and no netlink message can put the accept rule above into a legacy table. New reads
// that with getsockopt (IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES, and the IPv6 twins), only for
// the tables /proc lists as made in the host namespace, with no process; tables that were only
// listed (as "iptables-legacy -S" makes them) are not in use. Software that starts using
// iptables-legacy after New is not seen until the next start.
//
// The user's rules go in the chain "user" of table inet cnm, which forward jumps to first and
// cnm never flushes: a drop there is final, an accept there ends cnm's filtering of the packet
// (without the mark). Or in a table of the user's own, with a base chain on the forward hook:
// a drop there is final whatever its priority.
//
// Switching backends. With the nftables backend, [Driver.Reconcile] removes, over netlink,
// what the iptables backend left in the iptables-nft tables (every "CNM-" chain but CNM-USER,
// the user's, and the rules jumping to them) and reports it; with the iptables backend it
// removes the table inet cnm (the user chain in it too) and the accept rules above. Rules the
// iptables backend wrote with iptables-legacy are not visible to the nftables backend and
// stay.
//
// # Published ports
//
// CreateEndpoint publishes the ports of [drivers.CreateEndpointRequest].Ports with no proxy
// process: a DNAT per port and family in CNM-DNAT, reached for traffic to any local address from outside
// (PREROUTING), from the host itself (OUTPUT; not 127.0.0.0/8) and from containers (hairpin:
// the DNATed traffic goes back into the bridge, and the network's hairpin MASQUERADE,
// "-s S -o BR -m conntrack --ctstate DNAT -j MASQUERADE" in CNM-POSTROUTING, makes the reply
// return through the host), and an ACCEPT reached from CNM-PORTS, after isolation and ahead
// of the networks' DROPs. Each endpoint's rules live in its chains CNM-E-E12 (see above), and
// each carries the comment "cnm:" and the first 12 characters of its ID. CreateEndpoint of a
// new endpoint and DeleteEndpoint are one iptables-restore each, with no iptables-save; an
// endpoint created again (a restart) converges without duplicates, and Reconcile removes the
// chains and jumps of endpoints the driver does not know. With ICC disabled, published ports
// are reached from outside the bridge only.
//
// Families. A binding without a host address (-p 8080:80) is published in each family the
// endpoint has an address of: on a dual-stack endpoint, on 0.0.0.0 and on [::], with the same
// host port (an ephemeral pick is a port free in both), by iptables and ip6tables DNAT. A
// binding with an address is published in that address's family only: 0.0.0.0:8080:80 in
// IPv4, [2001:db8::1]:8080:80 or [::]:8080:80 in IPv6 (which needs the endpoint's IPv6 address;
// cnm.ErrInvalidParameter without one). [::1] is refused (cnm.ErrNotSupported): IPv6 does not
// route DNATed loopback traffic to another interface (it has no route_localnet), so only a
// proxy could serve it, and the driver starts none. A network's host_binding_ipv4 is the
// default address of its bindings.
//
// Holding the ports. Every published host port is held, for the life of the endpoint, by a
// socket in the host namespace ([Config].HostNetns), whatever writes the rules: a TCP socket
// bound and never listening, or a UDP socket bound and never read, without SO_REUSEADDR, with
// IP_FREEBIND (so a host address may come up later) and, for IPv6, IPV6_V6ONLY. So a host
// service cannot bind a published port (its bind fails with EADDRINUSE, with or without
// SO_REUSEADDR) and lose its traffic to the DNAT unseen, and a port anybody holds already is
// refused: a *[PortInUseError] naming the port (matching cnm.ErrConflict), before any rule is
// written, with nothing reserved or left open. An ephemeral pick, or one from a range, skips
// ports in use. A port another endpoint of the driver publishes (the same protocol and family,
// and the same address or either unspecified) is a conflict too (cnm.ErrConflict); ephemeral
// ports come from [Config].PortRange. The sockets are opened in one trip into the namespace
// per CreateEndpoint ((*netns.NS).Do) and bound outside it; DeleteEndpoint closes them after
// the rules are gone, and Close closes all of them. After a restart, CreateEndpoint with the
// bound ports (as the Controller restores endpoints) binds them again; between the two, the
// ports are free. Note that a TCP port in TIME_WAIT on the host cannot be bound without
// SO_REUSEADDR either: publishing it fails until that state ends (60 s).
//
// # iptables backend
//
// New reads the iptables binary's version, and whether it takes --random-fully (1.6.2 and
// later, used on every outbound MASQUERADE, as Docker does), with github.com/coreos/go-iptables;
// its mode ("nf_tables" or "legacy") from the binary iptables-restore resolves to; and, with one
// save per family of the other backend in the host namespace, whether that backend holds
// FORWARD or nat rules. The rules themselves still go through one iptables-restore transaction
// per operation. Mixed backends (a Docker or a firewall using iptables-legacy on an
// iptables-nft host, or the reverse) are the classic failure where rules land where nobody
// looks: the kernel runs both, so a DROP policy on the other side drops what the driver's rules
// accept. The driver does not touch the other backend: New logs a warning, [Driver.IPTables]
// returns a *[BackendConflictError] (matching cnm.ErrConflict) that names what it found, and
// [Driver.Reconcile] reports it as a repair "left alone", so that the operator sees it in
// Controller.Repairs.
//
// # Privilege and namespaces
//
// Everything needs CAP_NET_ADMIN in the host namespace ([Config].HostNetns). The driver keeps
// netlink sockets opened in the host namespace by New, and creates the sandbox end of a veth
// through the namespace descriptor in the [drivers.JoinRequest]. Only the firewall work and the
// port holding enter the host namespace, through (*netns.NS).Do: to start iptables-save and
// iptables-restore, and their ip6tables counterparts (born there, waited for outside), to read
// and write the sysctls, and to open the sockets that hold published ports. A [Driver] is safe for
// concurrent use and must be closed.
package bridge
