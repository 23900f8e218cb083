package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// publish creates endpoint eid of network nid with address addr and ports, and deletes it when
// the test ends.
func (e *testEnv) publish(t *testing.T, nid drivers.NetworkID, eid drivers.EndpointID, addr string, ports ...drivers.PortBinding) []drivers.PortBinding {
	t.Helper()
	res, err := e.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{
		NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix(addr), Ports: ports,
	})
	if err != nil {
		t.Fatalf("CreateEndpoint with ports %v: %v", ports, err)
	}
	t.Cleanup(func() {
		if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Errorf("DeleteEndpoint: %v", err)
		}
	})
	return res.Ports
}

// exchange connects from the namespace from to to over TCP (IPv4 or IPv6), sends "ping", and expects the
// listener ln (in another namespace) to accept it, read "ping" and answer "pong". It returns
// the client address the listener saw.
func exchange(from *netns.NS, to netip.AddrPort, ln *net.TCPListener) (netip.Addr, error) {
	var (
		fd int
		sa unix.Sockaddr
	)
	af := unix.AF_INET
	if to.Addr().Is6() {
		af, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
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
	if err := errors.Join(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)); err != nil {
		return netip.Addr{}, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		return netip.Addr{}, fmt.Errorf("connect %s: %w", to, err)
	}
	if _, err := unix.Write(fd, []byte("ping")); err != nil {
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
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4)
	if _, err := c.Read(buf); err != nil || string(buf) != "ping" {
		return netip.Addr{}, fmt.Errorf("server read %q: %v", buf, err)
	}
	if _, err := c.Write([]byte("pong")); err != nil {
		return netip.Addr{}, err
	}
	n, err := unix.Read(fd, buf)
	if err != nil || string(buf[:max(n, 0)]) != "pong" {
		return netip.Addr{}, fmt.Errorf("client read %q: %v", buf[:max(n, 0)], err)
	}
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), nil
}

var (
	hostIP2 = netip.MustParsePrefix("192.0.2.3/24") // a second address of the host's uplink
	ctrA    = netip.MustParseAddr("10.10.1.2")
	ctrB    = netip.MustParseAddr("10.10.1.3")
	gwA     = netip.MustParseAddr("10.10.1.1")
)

func tcp(host, ctr uint16) drivers.PortBinding {
	return drivers.PortBinding{Proto: "tcp", HostPort: host, ContainerPort: ctr}
}

// TestPrivilegedPublishedPorts proves published ports on the wire: reached from an outside
// host, from the host itself and from containers of the same bridge (hairpin), bound to one
// host address only when asked, an ephemeral port reported back and reachable, and an
// unpublished port closed.
func TestPrivilegedPublishedPorts(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	if err := l.h.AddrAdd(l.link(t, "uplink"), bridgeAddr(hostIP2)); err != nil {
		t.Fatal(err)
	}
	host1, host2 := hostUplink.Addr(), hostIP2.Addr()
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	eid := driverstest.NewEndpointID()
	bound := l.publish(t, nid, eid, "10.10.1.2/24",
		tcp(8080, 80),
		drivers.PortBinding{HostIP: host1, HostPort: 9090, ContainerPort: 90},
		drivers.PortBinding{ContainerPort: 70}, // ephemeral (-P)
	)
	if len(bound) != 3 || bound[2].HostPort < DefaultPortRangeFirst || bound[2].HostPort > DefaultPortRangeLast {
		t.Fatalf("bound ports = %v, want 3 with an ephemeral one in %d-%d", bound, DefaultPortRangeFirst, DefaultPortRangeLast)
	}
	want := []drivers.PortBinding{tcp(8080, 80), {Proto: "tcp", HostIP: host1, HostPort: 9090, ContainerPort: 90}, tcp(bound[2].HostPort, 70)}
	if diff := cmp.Diff(want, bound, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("bound ports (-want +got):\n%s", diff)
	}
	sb := nstest.NewNS(t)
	l.joinEID(t, sb, nid, eid, "eth0", "10.10.1.2/24", gwA)
	sb2 := l.sandbox(t, nid, "10.10.1.3/24", gwA)
	ln80 := listen(t, sb, "10.10.1.2:80")
	ln90 := listen(t, sb, "10.10.1.2:90")
	ln70 := listen(t, sb, "10.10.1.2:70")
	listen(t, sb, "10.10.1.2:81") // listening, but not published

	for _, c := range []struct {
		name   string
		from   *netns.NS
		to     netip.AddrPort
		ln     *net.TCPListener
		seenAs netip.Addr // zero: not checked
	}{
		{"outside", l.outside, netip.AddrPortFrom(host1, 8080), ln80, outsideIP.Addr()},
		{"outside to the second host address", l.outside, netip.AddrPortFrom(host2, 8080), ln80, outsideIP.Addr()},
		{"host itself", l.host, netip.AddrPortFrom(host1, 8080), ln80, netip.Addr{}},
		{"other container (hairpin)", sb2, netip.AddrPortFrom(host1, 8080), ln80, gwA},
		{"the container itself (hairpin)", sb, netip.AddrPortFrom(host1, 8080), ln80, gwA},
		{"outside to the bound host address", l.outside, netip.AddrPortFrom(host1, 9090), ln90, outsideIP.Addr()},
		{"outside to the ephemeral port", l.outside, netip.AddrPortFrom(host1, bound[2].HostPort), ln70, outsideIP.Addr()},
		{"host to the ephemeral port", l.host, netip.AddrPortFrom(host2, bound[2].HostPort), ln70, netip.Addr{}},
	} {
		seen, err := exchange(c.from, c.to, c.ln)
		if err != nil {
			t.Errorf("%s to %s: %v", c.name, c.to, err)
			continue
		}
		if c.seenAs.IsValid() && seen != c.seenAs {
			t.Errorf("%s to %s: the container sees the client as %v, want %v", c.name, c.to, seen, c.seenAs)
		}
	}
	if _, err := exchange(l.outside, netip.AddrPortFrom(host2, 9090), ln90); err == nil {
		t.Error("a port bound to 192.0.2.1 is reachable through 192.0.2.3")
	}
	if _, err := exchange(l.outside, netip.AddrPortFrom(host1, 81), ln90); err == nil {
		t.Error("an unpublished port is reachable")
	}
	_ = ctrB
}

// TestPrivilegedPortLifecycle checks conflicts (refused, nothing half-made), that deleting an
// endpoint removes exactly its rules and frees its ports, that a restart re-creates them
// without duplicates, and that endpoints without ports cost no iptables process.
func TestPrivilegedPortLifecycle(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.1.0/24")}
	e.createNetwork(t, req)
	nid := req.NetworkID
	base := e.save(t)

	// No ports: no iptables work on create, join, leave or delete.
	runs := e.d.fw.Runs()
	plain := driverstest.NewEndpointID()
	if _, err := e.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: plain, IPv4: netip.MustParsePrefix("10.10.1.9/24")}); err != nil {
		t.Fatal(err)
	}
	sb := nstest.NewNS(t)
	if _, err := e.d.Join(t.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: plain, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: plain}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: plain}); err != nil {
		t.Fatal(err)
	}
	if got := e.d.fw.Runs() - runs; got != 0 {
		t.Errorf("an endpoint without ports started %d iptables processes, want 0", got)
	}

	a := driverstest.NewEndpointID()
	areq := drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: a, IPv4: netip.MustParsePrefix("10.10.1.2/24"),
		Ports: []drivers.PortBinding{tcp(8080, 80), {Proto: "udp", HostPort: 5353, ContainerPort: 53}}}
	res, err := e.d.CreateEndpoint(t.Context(), areq)
	if err != nil {
		t.Fatal(err)
	}
	withA := e.save(t)
	if n := strings.Count(withA, `"cnm:`+a.Short()+`"`); n != 4 {
		t.Errorf("endpoint A has %d tagged rules, want 4 (2 DNAT, 2 ACCEPT):\n%s", n, withA)
	}
	// Conflicts: the same port and protocol on all addresses, or on one of them.
	b := driverstest.NewEndpointID()
	for _, p := range [][]drivers.PortBinding{
		{tcp(8081, 81), tcp(8080, 80)}, // the first is free: it must not stay reserved
		{{Proto: "tcp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 8080, ContainerPort: 80}},
		{{Proto: "udp", HostPort: 5353, ContainerPort: 53}},
	} {
		_, err := e.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: b, IPv4: netip.MustParsePrefix("10.10.1.3/24"), Ports: p})
		var ce *errclass.ConflictError
		if !errors.As(err, &ce) || !errors.Is(err, errclass.ErrConflict) {
			t.Errorf("CreateEndpoint publishing %v again: %v, want a conflict", p, err)
		}
	}
	if diff := cmp.Diff(withA, e.save(t)); diff != "" {
		t.Errorf("a refused endpoint changed the rules:\n%s", diff)
	}
	// Other protocol, or the freed 8081: fine.
	e.publish(t, nid, b, "10.10.1.3/24", drivers.PortBinding{Proto: "udp", HostPort: 8080, ContainerPort: 80}, tcp(8081, 81))
	if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: b}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(withA, e.save(t)); diff != "" {
		t.Errorf("rules after deleting endpoint B (-before +after):\n%s", diff)
	}

	// Idempotent, and a restart with the bound ports converges.
	areq.Ports = res.Ports
	if _, err := e.d.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	e.restart(t) // the process, and the sockets holding its ports, are gone
	d2 := e.d
	if err := d2.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(withA, e.save(t)); diff != "" {
		t.Errorf("rules after re-creating the endpoint and a restart (-before +after):\n%s", diff)
	}
	// The restarted driver knows the port is taken.
	if _, err := d2.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: b, IPv4: netip.MustParsePrefix("10.10.1.3/24"), Ports: []drivers.PortBinding{tcp(8080, 80)}}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("after a restart, publishing a bound port again: %v, want a conflict", err)
	}
	// A lost rule comes back once.
	if out, err := nstest.Exec(e.host, "iptables", "-t", "nat", "-F", ChainDNAT); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := d2.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sortedLines(withA), sortedLines(e.save(t))); diff != "" {
		t.Errorf("rules after repairing lost DNAT rules (-before +after):\n%s", diff)
	}
	// Delete removes exactly A's rules and frees its ports.
	if err := d2.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: a}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("rules after deleting endpoint A (-before create +after delete):\n%s", diff)
	}
	if err := d2.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: a}); err != nil {
		t.Errorf("DeleteEndpoint twice: %v", err)
	}
	if _, err := d2.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: b, IPv4: netip.MustParsePrefix("10.10.1.3/24"), Ports: []drivers.PortBinding{tcp(8080, 80)}}); err != nil {
		t.Errorf("publishing a freed port: %v", err)
	}
	if err := d2.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: b}); err != nil {
		t.Fatal(err)
	}
	// Another driver publishes A's ports; Reconcile of the second driver removes rules of
	// endpoints nobody knows.
	d3 := newDriver(t, e.host)
	if err := d3.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := d3.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{nid}})
	if err != nil {
		t.Fatal(err)
	}
	if len(repairs) != 1 || !strings.Contains(repairs[0].Object, a.Short()) {
		t.Errorf("repairs = %v, want the rules of endpoint %s", repairs, a.Short())
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("rules after Reconcile (-want +got):\n%s", diff)
	}
	if err := d3.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: a}); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedPortsRefused checks the requests that are refused before any kernel work.
func TestPrivilegedPortsRefused(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	internal := e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.3.0/24"), Internal: true})
	base := e.save(t)
	runs := e.d.fw.Runs()
	for _, c := range []struct {
		name  string
		req   drivers.CreateEndpointRequest
		class error
	}{
		{"container port 0", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{tcp(80, 0)}}, errclass.ErrInvalidParameter},
		{"bad protocol", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{{Proto: "sctp", ContainerPort: 80}}}, errclass.ErrInvalidParameter},
		{"reversed range", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{{HostPort: 90, HostPortEnd: 80, ContainerPort: 80}}}, errclass.ErrInvalidParameter},
		{"ranges of different lengths", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{{HostPort: 80, HostPortEnd: 82, ContainerPort: 80, ContainerPortEnd: 81}}}, errclass.ErrInvalidParameter},
		{"internal network", drivers.CreateEndpointRequest{NetworkID: internal, IPv4: netip.MustParsePrefix("10.10.3.2/24"), Ports: []drivers.PortBinding{tcp(80, 80)}}, errclass.ErrInvalidParameter},
		{"no IPv4 address", drivers.CreateEndpointRequest{NetworkID: nid, Ports: []drivers.PortBinding{tcp(80, 80)}}, errclass.ErrInvalidParameter},
		{"IPv6 host address, no IPv6 address", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{{HostIP: netip.MustParseAddr("2001:db8::1"), HostPort: 80, ContainerPort: 80}}}, errclass.ErrInvalidParameter},
		{"IPv6 loopback", drivers.CreateEndpointRequest{NetworkID: nid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), IPv6: netip.MustParsePrefix("fd00::2/64"), Ports: []drivers.PortBinding{{HostIP: netip.IPv6Loopback(), HostPort: 80, ContainerPort: 80}}}, errclass.ErrNotSupported},
	} {
		c.req.EndpointID = driverstest.NewEndpointID()
		if _, err := e.d.CreateEndpoint(t.Context(), c.req); !errors.Is(err, c.class) {
			t.Errorf("%s: CreateEndpoint = %v, want %v", c.name, err, c.class)
		}
	}
	if got := e.d.fw.Runs() - runs; got != 0 {
		t.Errorf("refused requests started %d iptables processes", got)
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("refused requests changed the rules:\n%s", diff)
	}
	// A range with no free port left.
	d, err := New(Config{HostNetns: e.host.Path(), PortRange: PortRange{40000, 40001}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := New(Config{HostNetns: e.host.Path(), PortRange: PortRange{40001, 40000}}); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("New with a reversed port range: %v, want invalid", err)
	}
	n2 := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.2.0/24")}
	if err := d.CreateNetwork(t.Context(), n2); err != nil {
		t.Fatal(err)
	}
	defer d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: n2.NetworkID})
	eid := driverstest.NewEndpointID()
	_, err = d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: n2.NetworkID, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.2.2/24"),
		Ports: []drivers.PortBinding{{ContainerPort: 1}, {ContainerPort: 2}, {ContainerPort: 3}}})
	if !errors.Is(err, errclass.ErrConflict) || !strings.Contains(err.Error(), "no free port") {
		t.Errorf("three ephemeral ports from a range of two: %v, want a conflict", err)
	}
	if len(d.bound) != 0 {
		t.Errorf("a refused endpoint left reservations: %v", d.bound)
	}
}

// TestPrivilegedConntrackFlush checks that deleting an endpoint deletes the conntrack entries
// of its address, and only those.
func TestPrivilegedConntrackFlush(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	eid := driverstest.NewEndpointID()
	if _, err := l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{tcp(8080, 80)}}); err != nil {
		t.Fatal(err)
	}
	sb := nstest.NewNS(t)
	l.joinEID(t, sb, nid, eid, "eth0", "10.10.1.2/24", gwA)
	other := l.sandbox(t, nid, "10.10.1.3/24", gwA)
	ln := listen(t, sb, "10.10.1.2:80")
	lnOut := listen(t, l.outside, "192.0.2.2:0")
	if _, err := exchange(l.outside, netip.AddrPortFrom(hostUplink.Addr(), 8080), ln); err != nil {
		t.Fatal(err)
	}
	if _, err := exchange(other, netip.AddrPortFrom(outsideIP.Addr(), uint16(lnOut.Addr().(*net.TCPAddr).Port)), lnOut); err != nil {
		t.Fatal(err)
	}
	count := conntrackCounter(t, l.host)
	if count(ctrA) == 0 || count(ctrB) == 0 {
		t.Fatalf("conntrack entries before: %d of %v, %d of %v; want some of each", count(ctrA), ctrA, count(ctrB), ctrB)
	}
	if err := l.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := l.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	// The flush runs after DeleteEndpoint returns; the address's next owner waits for it.
	reuse := driverstest.NewEndpointID()
	if _, err := l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: reuse, IPv4: netip.MustParsePrefix("10.10.1.2/24")}); err != nil {
		t.Fatal(err)
	}
	if n := count(ctrA); n != 0 {
		t.Errorf("%d conntrack entries of the deleted endpoint's address are left when its next owner is created", n)
	}
	if count(ctrB) == 0 {
		t.Error("the entries of another address were flushed too")
	}
}

// hostBind binds proto ("tcp" or "udp") on addr in ns as a host service would (Go's
// listeners set SO_REUSEADDR), and closes it again at once; it returns the bind's error.
func hostBind(ns *netns.NS, proto string, addr netip.AddrPort) error {
	return ns.Do(func() error {
		network := proto + "4"
		if addr.Addr().Is6() {
			network = proto + "6"
		}
		if proto == "udp" {
			c, err := net.ListenPacket(network, addr.String())
			if err != nil {
				return err
			}
			return c.Close()
		}
		ln, err := net.Listen(network, addr.String())
		if err != nil {
			return err
		}
		return ln.Close()
	})
}

// TestPrivilegedPortHeld checks that published host ports are held by sockets in the host
// namespace: a port a host service uses is refused with nothing made, a published port cannot
// be bound by a host service, -P skips ports in use, and a restart holds the ports again.
func TestPrivilegedPortHeld(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.1.0/24")}
	e.createNetwork(t, req)
	nid := req.NetworkID
	any8080 := netip.AddrPortFrom(netip.IPv4Unspecified(), 8080)
	lo8080 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 8080)

	// A host listener on 8080: -p 8080:80 fails, naming the port, and nothing is made.
	ln := listen(t, e.host, "127.0.0.1:8080")
	base := e.save(t)
	runs := e.d.fw.Runs()
	eid := driverstest.NewEndpointID()
	areq := drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.1.2/24"),
		Ports: []drivers.PortBinding{{Proto: "udp", HostPort: 5353, ContainerPort: 53}, tcp(8080, 80)}}
	_, err := e.d.CreateEndpoint(t.Context(), areq)
	var inUse *PortInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, errclass.ErrConflict) || !errors.Is(err, unix.EADDRINUSE) || inUse.Port != 8080 || !strings.Contains(err.Error(), "0.0.0.0:8080/tcp") {
		t.Fatalf("publishing 8080 with a host listener on 127.0.0.1:8080: %v, want a *PortInUseError naming 0.0.0.0:8080/tcp", err)
	}
	if got := e.d.fw.Runs() - runs; got != 0 {
		t.Errorf("the refused publish started %d iptables processes, want 0", got)
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("the refused publish changed the rules:\n%s", diff)
	}
	if len(e.d.bound) != 0 || e.d.endpoints[eid] != nil {
		t.Errorf("the refused publish left reservations %v or endpoint %v", e.d.bound, e.d.endpoints[eid])
	}
	if err := hostBind(e.host, "udp", netip.AddrPortFrom(netip.IPv4Unspecified(), 5353)); err != nil {
		t.Errorf("the refused publish still holds udp 5353: %v", err)
	}

	// Published: a host service can no longer bind the ports, on any address, with or
	// without SO_REUSEADDR.
	ln.Close()
	res, err := e.d.CreateEndpoint(t.Context(), areq)
	if err != nil {
		t.Fatal(err)
	}
	areq.Ports = res.Ports
	held := func(d string) {
		t.Helper()
		for _, c := range []struct {
			proto string
			addr  netip.AddrPort
		}{{"tcp", any8080}, {"tcp", lo8080}, {"udp", netip.AddrPortFrom(netip.IPv4Unspecified(), 5353)}} {
			if err := hostBind(e.host, c.proto, c.addr); !errors.Is(err, unix.EADDRINUSE) {
				t.Errorf("%s: a host bind of published %s %s: %v, want EADDRINUSE", d, c.proto, c.addr, err)
			}
		}
	}
	held("published")
	if err := hostBind(e.host, "tcp", netip.AddrPortFrom(netip.IPv4Unspecified(), 8081)); err != nil {
		t.Errorf("an unpublished port is held: %v", err)
	}
	// The sockets are in the driver's host namespace, not in the test's own.
	if own, err := net.Listen("tcp4", any8080.String()); err != nil {
		t.Errorf("8080 is held in the test's namespace too: %v", err)
	} else {
		own.Close()
	}

	// The same request again (idempotent) keeps holding the ports with the same sockets.
	if _, err := e.d.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	held("after the same request again")

	// A restart: the new driver holds the ports again when the endpoint is re-created.
	e.d.Close()
	if err := hostBind(e.host, "tcp", any8080); err != nil {
		t.Errorf("the closed driver still holds 8080: %v", err)
	}
	e.restart(t)
	if err := e.d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateEndpoint(t.Context(), areq); err != nil {
		t.Fatal(err)
	}
	held("after a restart")

	// -P never picks a port in use: with a host service on 40000 and 40002, of a range of
	// three, the pick is 40001, then none is left.
	d, err := New(Config{HostNetns: e.host.Path(), PortRange: PortRange{40000, 40002}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	listen(t, e.host, "0.0.0.0:40000")
	listen(t, e.host, "127.0.0.1:40002")
	pick := driverstest.NewEndpointID()
	res, err = d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: pick, IPv4: netip.MustParsePrefix("10.10.1.3/24"),
		Ports: []drivers.PortBinding{{ContainerPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ports) != 1 || res.Ports[0].HostPort != 40001 {
		t.Errorf("-P with 40000 and 40002 in use picked %v, want 40001", res.Ports)
	}
	if _, err := d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: driverstest.NewEndpointID(), IPv4: netip.MustParsePrefix("10.10.1.4/24"),
		Ports: []drivers.PortBinding{{ContainerPort: 80}}}); !errors.Is(err, errclass.ErrConflict) || !strings.Contains(err.Error(), "no free port") {
		t.Errorf("-P with the whole range in use: %v, want a conflict", err)
	}
	if err := d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: pick}); err != nil {
		t.Fatal(err)
	}

	// Deleted: the ports are free again.
	if err := e.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		proto string
		addr  netip.AddrPort
	}{{"tcp", any8080}, {"udp", netip.AddrPortFrom(netip.IPv4Unspecified(), 5353)}, {"tcp", netip.AddrPortFrom(netip.IPv4Unspecified(), 40001)}} {
		if err := hostBind(e.host, c.proto, c.addr); err != nil {
			t.Errorf("after DeleteEndpoint, a host bind of %s %s: %v", c.proto, c.addr, err)
		}
	}
	if diff := cmp.Diff(base, e.save(t)); diff != "" {
		t.Errorf("rules after DeleteEndpoint (-before +after):\n%s", diff)
	}
}

// conntrackCounter returns a function that counts the conntrack entries of the namespace ns
// in which address a appears, as a source or destination of either direction.
func conntrackCounter(t *testing.T, ns *netns.NS) func(a netip.Addr) int {
	t.Helper()
	ct, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ct.Close)
	return func(a netip.Addr) int {
		t.Helper()
		family := netlink.InetFamily(unix.AF_INET)
		if a.Is6() {
			family = unix.AF_INET6
		}
		flows, err := ct.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range flows {
			for _, ip := range []net.IP{f.Forward.SrcIP, f.Forward.DstIP, f.Reverse.SrcIP, f.Reverse.DstIP} {
				if ip.Equal(a.AsSlice()) {
					n++
					break
				}
			}
		}
		return n
	}
}

// TestPrivilegedConntrackFlush6 checks that deleting an endpoint of a dual-stack network
// deletes the IPv6 conntrack entries of its IPv6 address too (its own connections out, through
// the masquerade, and connections to it from the host), and only those.
func TestPrivilegedConntrackFlush6(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	nid := l.newNetwork(t, ds("1"))
	a6, b6 := netip.MustParseAddr("fd00:10:1::2"), netip.MustParseAddr("fd00:10:1::3")
	gw6 := netip.MustParseAddr("fd00:10:1::1")
	eid := driverstest.NewEndpointID()
	if _, err := l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		IPv4: netip.MustParsePrefix("10.10.1.2/24"), IPv6: netip.PrefixFrom(a6, 64)}); err != nil {
		t.Fatal(err)
	}
	sb := nstest.NewNS(t)
	l.joinEID(t, sb, nid, eid, "eth0", "10.10.1.2/24", gwA)
	addAddr6(t, handleAt(t, sb), "eth0", netip.PrefixFrom(a6, 64), gw6)
	other := l.sandbox46(t, nid, "10.10.1.3/24", gwA, "fd00:10:1::3/64", gw6)

	lnOut := listen(t, l.outside, "[2001:db8::2]:0")
	waitPing(t, sb, outsideIP6.Addr()) // neighbour discovery on the fresh links first
	waitPing(t, other, outsideIP6.Addr())
	for name, from := range map[string]*netns.NS{"endpoint": sb, "other endpoint": other} {
		if _, err := dial(from, outsideIP6.Addr(), lnOut); err != nil {
			t.Fatalf("TCP over IPv6 from the %s to the outside: %v", name, err)
		}
	}
	lnA := listen(t, sb, "[fd00:10:1::2]:0")
	if _, err := dial(l.host, a6, lnA); err != nil {
		t.Fatalf("TCP over IPv6 from the host to the endpoint: %v", err)
	}
	count := conntrackCounter(t, l.host)
	if count(a6) < 2 || count(b6) == 0 {
		t.Fatalf("IPv6 conntrack entries before: %d of %v, %d of %v; want 2 of the first, some of the second", count(a6), a6, count(b6), b6)
	}
	if err := l.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := l.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	l.d.flushWG.Wait() // the flush runs after DeleteEndpoint returns
	if n := count(a6); n != 0 {
		t.Errorf("%d IPv6 conntrack entries of the deleted endpoint's address are left", n)
	}
	if count(b6) == 0 {
		t.Error("the IPv6 entries of another address were flushed too")
	}
}

// TestPrivilegedPublishedPorts6 proves published ports over IPv6 on the wire: on a dual-stack
// network, -p 8080:80 is published in both families (the same host port, held in both), and
// [2001:db8::1]:9090:90 in IPv6 only; each is reached by a real TCP exchange from an outside
// host, from the host itself and from containers (hairpin). [::1] is refused, as is an IPv6
// host address for an endpoint without an IPv6 address; deleting the endpoint leaves the
// IPv6 tables (with the nftables backend, its table) as they were.
func TestPrivilegedPublishedPorts6(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	host6, host4 := hostUplink6.Addr(), hostUplink.Addr()
	nid := l.newNetwork(t, ds("1"))
	gw6 := netip.MustParseAddr("fd00:10:1::1")
	ctr6 := netip.MustParseAddr("fd00:10:1::2")
	// nftState is the nftables backend's table, or "" with the iptables backend (whose rules
	// are in l.save and l.save6).
	nftState := func() string {
		if testFirewall != FirewallNftables {
			return ""
		}
		return nftTable(t, l.testEnv)
	}
	before4, before6, beforeNft := l.save(t), l.save6(t), nftState()

	// Refused before any kernel work.
	for _, c := range []struct {
		name  string
		req   drivers.CreateEndpointRequest
		class error
	}{
		{"[::1]", drivers.CreateEndpointRequest{IPv4: netip.MustParsePrefix("10.10.1.5/24"), IPv6: netip.MustParsePrefix("fd00:10:1::5/64"),
			Ports: []drivers.PortBinding{{HostIP: netip.IPv6Loopback(), HostPort: 8080, ContainerPort: 80}}}, errclass.ErrNotSupported},
		{"IPv6 host address without an IPv6 address", drivers.CreateEndpointRequest{IPv4: netip.MustParsePrefix("10.10.1.5/24"),
			Ports: []drivers.PortBinding{{HostIP: host6, HostPort: 8080, ContainerPort: 80}}}, errclass.ErrInvalidParameter},
	} {
		c.req.NetworkID, c.req.EndpointID = nid, driverstest.NewEndpointID()
		if _, err := l.d.CreateEndpoint(t.Context(), c.req); !errors.Is(err, c.class) {
			t.Errorf("%s: CreateEndpoint = %v, want %v", c.name, err, c.class)
		}
	}

	eid := driverstest.NewEndpointID()
	res, err := l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		IPv4: netip.MustParsePrefix("10.10.1.2/24"), IPv6: netip.PrefixFrom(ctr6, 64),
		Ports: []drivers.PortBinding{tcp(8080, 80), {HostIP: host6, HostPort: 9090, ContainerPort: 90}, {ContainerPort: 70}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ports) != 3 || res.Ports[0].HostPort != 8080 || res.Ports[1].HostPort != 9090 || res.Ports[1].HostIP != host6 {
		t.Fatalf("bound ports = %v", res.Ports)
	}
	eph := res.Ports[2].HostPort
	sb := nstest.NewNS(t)
	l.joinEID(t, sb, nid, eid, "eth0", "10.10.1.2/24", gwA)
	addAddr6(t, handleAt(t, sb), "eth0", netip.PrefixFrom(ctr6, 64), gw6)
	other := l.sandbox46(t, nid, "10.10.1.3/24", gwA, "fd00:10:1::3/64", gw6)
	ln80v6 := listen(t, sb, "[fd00:10:1::2]:80")
	ln80v4 := listen(t, sb, "10.10.1.2:80")
	ln90 := listen(t, sb, "[fd00:10:1::2]:90")
	ln70 := listen(t, sb, "[fd00:10:1::2]:70")
	// The fresh links resolve their IPv6 neighbours first, so that no exchange waits on it
	// (on a loaded machine that can take seconds).
	waitPing(t, l.outside, host6)
	waitPing(t, l.host, ctr6)
	waitPing(t, other, gw6)

	for _, c := range []struct {
		name   string
		from   *netns.NS
		to     netip.AddrPort
		ln     *net.TCPListener
		seenAs netip.Addr // zero: not checked
	}{
		{"outside over IPv6", l.outside, netip.AddrPortFrom(host6, 8080), ln80v6, outsideIP6.Addr()},
		{"host itself over IPv6", l.host, netip.AddrPortFrom(host6, 8080), ln80v6, netip.Addr{}},
		{"other container over IPv6 (hairpin)", other, netip.AddrPortFrom(host6, 8080), ln80v6, gw6},
		{"the container itself over IPv6 (hairpin)", sb, netip.AddrPortFrom(host6, 8080), ln80v6, gw6},
		{"outside over IPv4, same binding", l.outside, netip.AddrPortFrom(host4, 8080), ln80v4, outsideIP.Addr()},
		{"outside to the IPv6-only binding", l.outside, netip.AddrPortFrom(host6, 9090), ln90, outsideIP6.Addr()},
		{"host to the IPv6-only binding", l.host, netip.AddrPortFrom(host6, 9090), ln90, netip.Addr{}},
		{"outside to the ephemeral port over IPv6", l.outside, netip.AddrPortFrom(host6, eph), ln70, outsideIP6.Addr()},
	} {
		seen, err := exchange(c.from, c.to, c.ln)
		if err != nil {
			t.Errorf("%s to %s: %v", c.name, c.to, err)
			continue
		}
		if c.seenAs.IsValid() && seen != c.seenAs {
			t.Errorf("%s to %s: the container sees the client as %v, want %v", c.name, c.to, seen, c.seenAs)
		}
	}
	if _, err := exchange(l.outside, netip.AddrPortFrom(host4, 9090), ln90); err == nil {
		t.Error("the IPv6-only binding [2001:db8::1]:9090 is reachable over IPv4")
	}
	// Held in both families.
	held := func(when string) {
		t.Helper()
		for _, a := range []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), 8080), netip.AddrPortFrom(netip.IPv6Unspecified(), 8080),
			netip.AddrPortFrom(host6, 9090), netip.AddrPortFrom(netip.IPv6Unspecified(), eph), netip.AddrPortFrom(netip.IPv4Unspecified(), eph)} {
			if err := hostBind(l.host, "tcp", a); !errors.Is(err, unix.EADDRINUSE) {
				t.Errorf("%s: a host bind of published %s: %v, want EADDRINUSE", when, a, err)
			}
		}
	}
	held("published")

	// A restart: the endpoint re-created with the ports as bound gets the same rules in both
	// families, holds its ports again, and is reached over IPv6.
	with4, with6, withNft := l.save(t), l.save6(t), nftState()
	if testFirewall == FirewallNftables {
		for _, el := range []string{"fd00:10:1::2 . tcp . 80", "fd00:10:1::2 . tcp . 90", "2001:db8::1 . tcp . 9090 ",
			": fd00:10:1::2 . 90", ": fd00:10:1::2 . 80", ": 10.10.1.2 . 80"} {
			if !strings.Contains(withNft, el) {
				t.Errorf("no element %q in the nftables table:\n%s", el, withNft)
			}
		}
	}
	l.restart(t)
	if err := l.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ds("1").IPv4, IPv6: ds("1").IPv6, EnableIPv6: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		IPv4: netip.MustParsePrefix("10.10.1.2/24"), IPv6: netip.PrefixFrom(ctr6, 64), Ports: res.Ports}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(with6, l.save6(t)); diff != "" {
		t.Errorf("ip6tables after a restart (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(with4, l.save(t)); diff != "" {
		t.Errorf("iptables after a restart (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(withNft, nftState()); diff != "" {
		t.Errorf("nftables after a restart (-before +after):\n%s", diff)
	}
	held("after a restart")
	if _, err := exchange(l.outside, netip.AddrPortFrom(host6, 8080), ln80v6); err != nil {
		t.Errorf("outside over IPv6 after a restart: %v", err)
	}

	if err := l.d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before6, l.save6(t)); diff != "" {
		t.Errorf("ip6tables after DeleteEndpoint (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(before4, l.save(t)); diff != "" {
		t.Errorf("iptables after DeleteEndpoint (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(beforeNft, nftState()); diff != "" {
		t.Errorf("nftables after DeleteEndpoint (-before +after):\n%s", diff)
	}
	if err := hostBind(l.host, "tcp", netip.AddrPortFrom(netip.IPv6Unspecified(), 8080)); err != nil {
		t.Errorf("after DeleteEndpoint, a host bind of [::]:8080: %v", err)
	}
}

// waitPing waits up to ten seconds for a ping from ns to a to be answered, and fails the test
// when none is.
func waitPing(t *testing.T, ns *netns.NS, a netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, ok := nstest.Ping(ns.Path(), a.String(), 1)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ping from %s to %s answered in 10s:\n%s", ns.Path(), a, out)
		}
	}
}
