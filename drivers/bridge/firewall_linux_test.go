package bridge

import (
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/iptables"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

var (
	hostUplink = netip.MustParsePrefix("192.0.2.1/24")
	outsideIP  = netip.MustParsePrefix("192.0.2.2/24")
)

// lab is a "host" namespace with a driver in it, and an "outside" namespace joined to it by a
// veth: uplink (192.0.2.1/24) in the host, eth0 (192.0.2.2/24) outside. The outside has no
// route to the container subnets: only NAT makes replies find their way back.
type lab struct {
	*testEnv
	outside *netns.NS
	oh      *netlink.Handle
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{testEnv: newEnv(t), outside: nstest.NewNS(t)}
	l.oh = handleAt(t, l.outside)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(l.outside.FD())}
	if err := l.h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before newEnv's check for a bare host namespace
		if err := l.h.LinkDel(veth); err != nil {
			t.Errorf("delete uplink: %v", err)
		}
	})
	up := l.link(t, "uplink")
	if err := l.h.AddrAdd(up, bridgeAddr(hostUplink)); err != nil {
		t.Fatal(err)
	}
	if err := l.h.LinkSetUp(up); err != nil {
		t.Fatal(err)
	}
	o, err := l.oh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.oh.AddrAdd(o, bridgeAddr(outsideIP)); err != nil {
		t.Fatal(err)
	}
	if err := l.oh.LinkSetUp(o); err != nil {
		t.Fatal(err)
	}
	return l
}

// v6 returns the IPAM data of an IPv6 subnet with its gateway at ::1.
func v6(subnet string) []drivers.IPAMData {
	p := netip.MustParsePrefix(subnet)
	return []drivers.IPAMData{{Subnet: p, Gateway: p.Addr().Next()}}
}

// v4 returns the IPAM data of a /24 subnet with its gateway at .1.
func v4(subnet string) []drivers.IPAMData {
	p := netip.MustParsePrefix(subnet)
	return []drivers.IPAMData{{Subnet: p, Gateway: p.Addr().Next()}}
}

// join joins a new endpoint of network nid to the sandbox sb as ifName with address addr,
// configures it by hand as the sandbox would (address, up, and a default route through gw
// when gw is valid), and leaves when the test ends.
func (e *testEnv) join(t *testing.T, sb *netns.NS, nid drivers.NetworkID, ifName, addr string, gw netip.Addr) {
	t.Helper()
	e.joinEID(t, sb, nid, driverstest.NewEndpointID(), ifName, addr, gw)
}

// joinEID is join for the endpoint eid.
func (e *testEnv) joinEID(t *testing.T, sb *netns.NS, nid drivers.NetworkID, eid drivers.EndpointID, ifName, addr string, gw netip.Addr) {
	t.Helper()
	a := netip.MustParsePrefix(addr)
	if _, err := e.d.Join(t.Context(), drivers.JoinRequest{
		NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: ifName, MAC: endpointMAC(a.Addr()),
	}); err != nil {
		t.Fatalf("Join: %v", err)
	}
	t.Cleanup(func() {
		if err := e.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Errorf("Leave: %v", err)
		}
	})
	sh := handleAt(t, sb)
	c, err := sh.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.AddrAdd(c, bridgeAddr(a)); err != nil {
		t.Fatal(err)
	}
	if err := sh.LinkSetUp(c); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := sh.RouteAdd(&netlink.Route{LinkIndex: c.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatal(err)
		}
	}
}

// sandbox makes a sandbox namespace joined to network nid as eth0 with address addr and a
// default route through gw (none when gw is zero).
func (e *testEnv) sandbox(t *testing.T, nid drivers.NetworkID, addr string, gw netip.Addr) *netns.NS {
	t.Helper()
	sb := nstest.NewNS(t)
	e.join(t, sb, nid, "eth0", addr, gw)
	return sb
}

func (e *testEnv) newNetwork(t *testing.T, req drivers.CreateNetworkRequest) drivers.NetworkID {
	t.Helper()
	if req.NetworkID == "" {
		req.NetworkID = driverstest.NewNetworkID()
	}
	e.createNetwork(t, req)
	return req.NetworkID
}

// canPing checks that a ping from ns to addr is answered (want) or not.
func canPing(t *testing.T, from *netns.NS, name, addr string, want bool) {
	t.Helper()
	count := 3
	if !want {
		count = 1
	}
	out, ok := nstest.Ping(from.Path(), addr, count)
	if ok != want {
		t.Errorf("ping from %s to %s: answered %v, want %v\n%s", name, addr, ok, want, out)
	}
}

// listen opens a TCP listener inside ns. Only the socket is opened in the namespace; it
// stays there.
func listen(t *testing.T, ns *netns.NS, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp6"
	}
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dial connects from ns to the listener's address at to, waiting at most two seconds, and
// returns the remote address the listener saw, or an error.
func dial(from *netns.NS, to netip.Addr, ln *net.TCPListener) (netip.Addr, error) {
	port := ln.Addr().(*net.TCPAddr).Port
	var (
		fd int
		sa unix.Sockaddr
	)
	af := unix.AF_INET
	if to.Is4() {
		sa = &unix.SockaddrInet4{Port: port, Addr: to.As4()}
	} else {
		af, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: port, Addr: to.As16()}
	}
	if err := from.Do(func() error {
		var err error
		fd, err = unix.Socket(af, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return netip.Addr{}, err
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return netip.Addr{}, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		return netip.Addr{}, err
	}
	if err := ln.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return netip.Addr{}, err
	}
	c, err := ln.Accept()
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), nil
}

// save returns the host namespace's rules, as iptables-save prints them without counters
// and comments.
func (e *testEnv) save(t *testing.T) string {
	t.Helper()
	out, err := nstest.Exec(e.host, "iptables-save")
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	return iptables.Normalize(out)
}

// save6 is save for the IPv6 tables (ip6tables-save).
func (e *testEnv) save6(t *testing.T) string {
	t.Helper()
	out, err := nstest.Exec(e.host, "ip6tables-save")
	if err != nil {
		t.Fatalf("ip6tables-save: %v: %s", err, out)
	}
	return iptables.Normalize(out)
}

func TestPrivilegedNAT(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	noMasq := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.2.0/24"), Options: NetworkOptions{DisableIPMasquerade: true}})
	sb := l.sandbox(t, nid, "10.10.1.2/24", netip.MustParseAddr("10.10.1.1"))
	sbNoMasq := l.sandbox(t, noMasq, "10.10.2.2/24", netip.MustParseAddr("10.10.2.1"))

	if out, err := nstest.Exec(l.host, "cat", "/proc/sys/net/ipv4/ip_forward"); err != nil || out != "1" {
		t.Errorf("ip_forward in the host namespace = %q, %v; want 1", out, err)
	}
	canPing(t, sb, "sandbox", "192.0.2.2", true)
	ln := listen(t, l.outside, "192.0.2.2:0")
	remote, err := dial(sb, outsideIP.Addr(), ln)
	if err != nil {
		t.Fatalf("TCP from the sandbox to the outside: %v", err)
	}
	if remote != hostUplink.Addr() {
		t.Errorf("the outside sees the sandbox as %v, want the host's address %v", remote, hostUplink.Addr())
	}
	// Without masquerade, the outside has no route back.
	canPing(t, sbNoMasq, "sandbox without masquerade", "192.0.2.2", false)
	if remote, err := dial(sbNoMasq, outsideIP.Addr(), ln); err == nil {
		t.Errorf("TCP from a network without masquerade crossed, seen as %v; want no reply", remote)
	}
	// The outside cannot open connections to the containers.
	if err := l.oh.RouteAdd(&netlink.Route{Dst: prefixNet("10.10.0.0/16"), Gw: hostUplink.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	lnIn := listen(t, sb, "10.10.1.2:0")
	if _, err := dial(l.outside, netip.MustParseAddr("10.10.1.2"), lnIn); err == nil {
		t.Error("TCP from the outside to a container of a NAT network crossed")
	}
}

func TestPrivilegedRouted(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.2.0/24"), Options: NetworkOptions{GatewayModeIPv4: GatewayModeRouted}})
	sb := l.sandbox(t, nid, "10.10.2.2/24", netip.MustParseAddr("10.10.2.1"))
	if err := l.oh.RouteAdd(&netlink.Route{Dst: prefixNet("10.10.2.0/24"), Gw: hostUplink.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	ln := listen(t, l.outside, "192.0.2.2:0")
	remote, err := dial(sb, outsideIP.Addr(), ln)
	if err != nil {
		t.Fatalf("TCP from a routed network to the outside: %v", err)
	}
	if remote != netip.MustParseAddr("10.10.2.2") {
		t.Errorf("the outside sees the container as %v, want its own address 10.10.2.2 (no NAT)", remote)
	}
	canPing(t, l.outside, "outside", "10.10.2.2", true)
	lnIn := listen(t, sb, "10.10.2.2:0")
	if _, err := dial(l.outside, netip.MustParseAddr("10.10.2.2"), lnIn); err == nil {
		t.Error("TCP from the outside to an unpublished port of a routed network crossed")
	}
}

func prefixNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestPrivilegedICCDisabled(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	gw := netip.MustParseAddr("10.10.1.1")
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24"), Options: NetworkOptions{DisableICC: true}})
	sb1 := l.sandbox(t, nid, "10.10.1.2/24", gw)
	sb2 := l.sandbox(t, nid, "10.10.1.3/24", gw)
	if out, err := nstest.Exec(l.host, "cat", sysctlBrNF); err != nil || out != "1" {
		t.Errorf("bridge-nf-call-iptables in the host namespace = %q, %v; want 1", out, err)
	}
	canPing(t, sb1, "sb1", "10.10.1.3", false)
	canPing(t, sb2, "sb2", "10.10.1.2", false)
	canPing(t, sb1, "sb1", "192.0.2.2", true)
	canPing(t, sb2, "sb2", "192.0.2.2", true)
	canPing(t, sb1, "sb1", gw.String(), true)

	// With ICC on (the default), they do reach each other.
	on := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.2.0/24")})
	sb3 := l.sandbox(t, on, "10.10.2.2/24", netip.Addr{})
	l.sandbox(t, on, "10.10.2.3/24", netip.Addr{})
	canPing(t, sb3, "sb3", "10.10.2.3", true)
}

func TestPrivilegedIsolation(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	gwA, gwB := netip.MustParseAddr("10.10.1.1"), netip.MustParseAddr("10.10.2.1")
	a := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	b := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.2.0/24")})
	sbA := l.sandbox(t, a, "10.10.1.2/24", gwA)
	sbB := l.sandbox(t, b, "10.10.2.2/24", gwB)
	both := nstest.NewNS(t)
	l.join(t, both, a, "eth0", "10.10.1.3/24", netip.Addr{})
	l.join(t, both, b, "eth1", "10.10.2.3/24", netip.Addr{})

	canPing(t, sbA, "A", "10.10.2.2", false)
	canPing(t, sbB, "B", "10.10.1.2", false)
	lnB := listen(t, sbB, "10.10.2.2:0")
	if _, err := dial(sbA, netip.MustParseAddr("10.10.2.2"), lnB); err == nil {
		t.Error("TCP from network A to network B crossed")
	}
	canPing(t, both, "A+B", "10.10.1.2", true)
	canPing(t, both, "A+B", "10.10.2.2", true)
	canPing(t, sbA, "A", "10.10.1.3", true)
	canPing(t, sbB, "B", "10.10.2.3", true)
	canPing(t, sbA, "A", "192.0.2.2", true)
	canPing(t, sbB, "B", "192.0.2.2", true)
}

func TestPrivilegedInternal(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	gw := netip.MustParseAddr("10.10.3.1")
	in := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.3.0/24"), Internal: true})
	ext := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	// Join gives no gateway; a default route added by hand must not get out either.
	sb1 := l.sandbox(t, in, "10.10.3.2/24", gw)
	sb2 := l.sandbox(t, in, "10.10.3.3/24", gw)
	sbExt := l.sandbox(t, ext, "10.10.1.2/24", netip.MustParseAddr("10.10.1.1"))
	canPing(t, sb1, "internal sb1", "10.10.3.3", true)
	canPing(t, sb2, "internal sb2", "10.10.3.2", true)
	canPing(t, sb1, "internal sb1", "192.0.2.2", false)
	canPing(t, sb1, "internal sb1", "10.10.1.2", false)
	canPing(t, sbExt, "external", "10.10.3.2", false)
	if strings.Contains(l.save(t), "-s 10.10.3.0/24") {
		t.Errorf("an internal network has a NAT rule:\n%s", l.save(t))
	}
}

// TestPrivilegedFirewallConverges checks that deleting a network removes exactly its rules,
// that creating one again (by the same driver or after a restart) changes nothing, and that a
// lost rule comes back without duplicates.
func TestPrivilegedFirewallConverges(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	base := e.save(t)

	reqs := []drivers.CreateNetworkRequest{
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.2.0/24"), Options: NetworkOptions{DisableICC: true}},
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.3.0/24"), Internal: true},
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.4.0/24"), Options: NetworkOptions{GatewayModeIPv4: GatewayModeRouted, BridgeName: "custom4"}},
	}
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	full := e.save(t)
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(full, e.save(t)); diff != "" {
		t.Errorf("rules after CreateNetwork again (-before +after):\n%s", diff)
	}
	d2 := newDriver(t, e.host) // a restart
	for _, req := range reqs {
		if err := d2.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(full, e.save(t)); diff != "" {
		t.Errorf("rules after a restart (-before +after):\n%s", diff)
	}
	// A rule lost (by hand) comes back, in its place, once.
	br := "br-" + reqs[0].NetworkID.Short()
	if out, err := nstest.Exec(e.host, "iptables", "-D", networkChain(br), "-i", br, "-o", br, "-j", "DROP"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := nstest.Exec(e.host, "iptables", "-D", "FORWARD", "-j", ChainForward); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := d2.CreateNetwork(t.Context(), reqs[0]); err != nil {
		t.Fatal(err)
	}
	// The network's chain was rewritten in order, and the jump from FORWARD put back after
	// CNM-USER.
	if diff := cmp.Diff(sortedLines(full), sortedLines(e.save(t))); diff != "" {
		t.Errorf("rules after repairing a lost rule (-before +after):\n%s", diff)
	}
	if got := strings.Split(e.save(t), "\n"); !slices.Contains(got, "-A FORWARD -j CNM-FORWARD") || slices.Index(got, "-A FORWARD -j CNM-USER")+1 != slices.Index(got, "-A FORWARD -j CNM-FORWARD") {
		t.Errorf("FORWARD after repair: want CNM-USER then CNM-FORWARD first:\n%s", e.save(t))
	}
	for _, req := range reqs {
		if err := d2.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("rules after deleting the networks (-before create +after delete):\n%s", diff)
	}
}

// TestPrivilegedUserChain checks that CNM-USER is jumped to first from FORWARD, and that the
// user's rules in it survive networks coming and going, and a restart.
func TestPrivilegedUserChain(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	for _, args := range [][]string{
		{"-N", ChainUser},
		{"-A", ChainUser, "-s", "203.0.113.0/24", "-j", "DROP"},
		{"-A", "FORWARD", "-s", "198.51.100.0/24", "-j", "ACCEPT"},
	} {
		if out, err := nstest.Exec(e.host, "iptables", args...); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	nid := e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	other := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.2.0/24"), Options: NetworkOptions{DisableICC: true}}
	if err := e.d.CreateNetwork(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	if err := newDriver(t, e.host).CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.10.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: other.NetworkID}); err != nil {
		t.Fatal(err)
	}
	out, err := nstest.Exec(e.host, "iptables", "-S", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-P FORWARD DROP", "-A FORWARD -j CNM-USER", "-A FORWARD -j CNM-FORWARD", "-A FORWARD -s 198.51.100.0/24 -j ACCEPT"}
	if diff := cmp.Diff(want, strings.Split(out, "\n")); diff != "" {
		t.Errorf("FORWARD (-want +got):\n%s", diff)
	}
	out, err = nstest.Exec(e.host, "iptables", "-S", ChainUser)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"-N CNM-USER", "-A CNM-USER -s 203.0.113.0/24 -j DROP"}, strings.Split(out, "\n")); diff != "" {
		t.Errorf("CNM-USER (-want +got):\n%s", diff)
	}
}

// TestPrivilegedFirewallGolden compares the ruleset after a scripted sequence with
// testdata/firewall.golden; go test -run TestPrivilegedFirewallGolden -update rewrites it.
func TestPrivilegedFirewallGolden(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	id := func(c string) drivers.NetworkID { return drivers.NetworkID(strings.Repeat(c, 64)) }
	// Every network is dual-stack: the IPv6 tables get the same layout.
	e.newNetwork(t, drivers.CreateNetworkRequest{NetworkID: id("a"), IPv4: v4("10.10.1.0/24"), IPv6: v6("fd00:10:1::/64"), EnableIPv6: true})
	e.newNetwork(t, drivers.CreateNetworkRequest{NetworkID: id("b"), IPv4: v4("10.10.2.0/24"), IPv6: v6("fd00:10:2::/64"), EnableIPv6: true,
		Options: NetworkOptions{DisableICC: true, BridgeName: "noicc0"}})
	e.newNetwork(t, drivers.CreateNetworkRequest{NetworkID: id("c"), IPv4: v4("10.10.3.0/24"), IPv6: v6("fd00:10:3::/64"), EnableIPv6: true, Internal: true})
	if err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: id("d"), IPv4: v4("10.10.4.0/24"), IPv6: v6("fd00:10:4::/64"), EnableIPv6: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: id("d")}); err != nil {
		t.Fatal(err)
	}
	// Published ports: one endpoint keeps two, another publishes one and is deleted.
	e.publish(t, id("a"), drivers.EndpointID(strings.Repeat("e", 64)), "10.10.1.2/24",
		drivers.PortBinding{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		drivers.PortBinding{Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 5353, ContainerPort: 53})
	gone := drivers.EndpointID(strings.Repeat("f", 64))
	if _, err := e.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: id("b"), EndpointID: gone,
		IPv4: netip.MustParsePrefix("10.10.2.2/24"), Ports: []drivers.PortBinding{{HostPort: 8081, ContainerPort: 80}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: id("b"), EndpointID: gone}); err != nil {
		t.Fatal(err)
	}
	got := e.save(t) + goldenMark + e.save6(t)
	path := filepath.Join("testdata", "firewall.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("ruleset (-%s +got):\n%s", path, diff)
	}
}

func TestPrivilegedMissingIPTables(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	t.Setenv("PATH", t.TempDir())
	d := newDriver(t, e.host)
	err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: ipv4})
	var ue *errclass.UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, errclass.ErrUnavailable) || !strings.Contains(err.Error(), "iptables-restore") {
		t.Errorf("CreateNetwork without iptables: %v, want an *UnavailableError naming iptables-restore", err)
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"lo"}) {
		t.Errorf("links after a refused CreateNetwork: %v", names)
	}
	// The firewall can be switched off, except for what needs it.
	d, err = New(Config{HostNetns: e.host.Path(), DisableIPTables: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: ipv4, Options: NetworkOptions{DisableICC: true}})
	if !errors.Is(err, errclass.ErrNotSupported) {
		t.Errorf("enable_icc=false with DisableIPTables: %v, want not supported", err)
	}
	nid := driverstest.NewNetworkID()
	if err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4}); err != nil {
		t.Errorf("CreateNetwork with DisableIPTables: %v", err)
	}
	if err := d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Error(err)
	}
}

// TestPrivilegedReconcileStaleRules checks that rules left by a crash between deleting a
// bridge and its rules are removed by Reconcile.
func TestPrivilegedReconcileStaleRules(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	live := e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	base := e.save(t)
	gone := driverstest.NewNetworkID()
	if err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: gone, IPv4: v4("10.10.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := e.h.LinkDel(e.link(t, "br-"+gone.Short())); err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, e.host)
	if err := d2.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: live, IPv4: v4("10.10.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{live}})
	if err != nil {
		t.Fatal(err)
	}
	want := []drivers.Repair{{Object: "iptables rules of br-" + gone.Short(), Action: "removed", Reason: "no such bridge"}}
	if diff := cmp.Diff(want, repairs); diff != "" {
		t.Errorf("repairs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("rules after Reconcile (-want +got):\n%s", diff)
	}
}

func sortedLines(s string) []string {
	l := strings.Split(s, "\n")
	slices.Sort(l)
	return l
}

// TestPrivilegedIPTablesBackend checks what New finds of iptables (version and mode, as
// "iptables --version" says them, and --random-fully support, which the MASQUERADE rules then
// use), and that FORWARD and nat rules in the other backend are reported: by New, by
// IPTables as a *BackendConflictError, and by Reconcile as a repair left alone.
func TestPrivilegedIPTablesBackend(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	out, err := nstest.Exec(e.host, "iptables", "--version")
	if err != nil {
		t.Fatalf("iptables --version: %v: %s", err, out)
	}
	info := e.d.IPTables()
	wantMode := ModeLegacy
	if strings.Contains(out, "(nf_tables)") {
		wantMode = ModeNFTables
	}
	if info.Version == "" || !strings.Contains(out, "v"+info.Version) || info.Mode != wantMode || !info.RandomFully || info.OtherBackend != nil {
		t.Errorf("IPTables() = %+v; iptables --version says %q", info, out)
	}
	e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	if s := e.save(t); !strings.Contains(s, "-j MASQUERADE --random-fully\n") {
		t.Errorf("no MASQUERADE --random-fully in:\n%s", s)
	}

	// The other backend gets a FORWARD policy DROP and a nat rule, as a Docker using it would.
	other := map[string]string{ModeNFTables: "iptables-legacy", ModeLegacy: "iptables-nft"}[info.Mode]
	for _, args := range [][]string{{"-P", "FORWARD", "DROP"}, {"-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE"}} {
		if out, err := nstest.Exec(e.host, other, args...); err != nil {
			t.Fatalf("%s %v: %v: %s", other, args, err, out)
		}
	}
	d2 := newDriver(t, e.host)
	var be *BackendConflictError
	err = d2.IPTables().OtherBackend
	if !errors.As(err, &be) || !errors.Is(err, errclass.ErrConflict) ||
		!slices.Equal(be.Found, []string{"IPv4 FORWARD policy DROP", "1 IPv4 nat rules"}) || be.Mode != info.Mode {
		t.Errorf("IPTables().OtherBackend with %s rules = %v (%+v)", other, err, be)
	}
	repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: e.liveNetworks(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(repairs) != 1 || repairs[0].Action != "left alone" || !strings.Contains(repairs[0].Reason, "FORWARD policy DROP") {
		t.Errorf("repairs = %v, want the other backend's rules reported", repairs)
	}
	// Reported, never changed.
	if out, err := nstest.Exec(e.host, other+"-save"); err != nil || !strings.Contains(out, ":FORWARD DROP") || !strings.Contains(out, "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE") {
		t.Errorf("%s-save after Reconcile: %v\n%s", other, err, out)
	}
}

// TestPrivilegedFirewallBuckets checks the bucketed shared chains: a network's rules (and an
// endpoint's jumps) sit in the bucket of its name, and the layout before buckets (the same
// rules in the shared chains themselves, as a driver of an older version wrote them) is moved
// into the buckets when a restarted driver re-creates the network and the endpoint.
func TestPrivilegedFirewallBuckets(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.1.0/24")}
	e.createNetwork(t, req)
	eid := driverstest.NewEndpointID()
	ereq := drivers.CreateEndpointRequest{NetworkID: req.NetworkID, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.1.2/24"),
		Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
	if _, err := e.d.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	full := e.save(t)
	br := "br-" + req.NetworkID.Short()
	nb, pb := networkBuckets(br), portBuckets(eid.Short())
	for _, want := range []string{
		"-A " + nb[2].chain + " -i " + br + " -j " + networkChain(br),
		"-A " + nb[0].chain + " -i " + br + " ! -o " + br + " -j " + ChainIsolation2,
		"-A " + pb[1].chain + " -j " + endpointChain(eid.Short()),
	} {
		if !strings.Contains(full, want+"\n") {
			t.Errorf("missing %q in:\n%s", want, full)
		}
	}

	// The layout before buckets: every rule of a bucket moved to its shared chain.
	var filter, nat []string
	table := ""
	for _, line := range strings.Split(full, "\n") {
		if strings.HasPrefix(line, "*") {
			table = line[1:]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		i := strings.LastIndexByte(f[1], '-')
		parent := f[1][:max(i, 0)]
		if !slices.ContainsFunc(append(slices.Clone(networkChains), portChains...), func(c chainRef) bool { return c.chain == parent }) {
			continue
		}
		rule := strings.Join(f[2:], " ")
		moved := []string{"-D " + f[1] + " " + rule, "-A " + parent + " " + rule}
		if table == tableNAT {
			nat = append(nat, moved...)
		} else {
			filter = append(filter, moved...)
		}
	}
	in := "*filter\n" + strings.Join(filter, "\n") + "\nCOMMIT\n*nat\n" + strings.Join(nat, "\n") + "\nCOMMIT\n"
	if err := e.d.fw.Restore(t.Context(), in); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.save(t), "-A "+nb[2].chain+" ") {
		t.Fatalf("the network's rules are still in %s", nb[2].chain)
	}
	e.restart(t)
	if err := e.d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sortedLines(full), sortedLines(e.save(t))); diff != "" {
		t.Errorf("rules after a restart on the layout before buckets (-bucketed +got):\n%s", diff)
	}
	if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: req.NetworkID, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
}
