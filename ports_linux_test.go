package cnm_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/iptables"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// portsHostIP is an address of the lab's host namespace, on a veth.
var portsHostIP = netip.MustParsePrefix("192.0.2.1/24")

func saveRules(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out, err := nstest.Exec(ns, "iptables-save")
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	return iptables.Normalize(out)
}

// talk connects from the namespace at fromPath to to (IPv4 or IPv6), sends "ping" and expects
// the listener ln to answer "pong".
func talk(fromPath string, to netip.AddrPort, ln net.Listener) error {
	from, err := netns.Open(fromPath)
	if err != nil {
		return err
	}
	defer from.Close()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), 2*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		return err
	}
	defer s.Close()
	buf := make([]byte, 4)
	if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
		return fmt.Errorf("server read %q: %v", buf, err)
	}
	if _, err := s.Write([]byte("pong")); err != nil {
		return err
	}
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		return fmt.Errorf("client read %q: %v", buf, err)
	}
	return nil
}

// listenAt opens a TCP listener on addr in ns, closed when the test ends.
func listenAt(t *testing.T, ns *netns.NS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// bindIn listens on the TCP port addr in ns, as a host service would, and closes the
// listener again; it returns the error of the bind.
func bindIn(ns *netns.NS, addr netip.AddrPort) error {
	return ns.Do(func() error {
		ln, err := net.Listen("tcp4", addr.String())
		if err != nil {
			return err
		}
		return ln.Close()
	})
}

// TestPrivilegedPublishedPorts publishes ports through the Controller (-p and -P), reaches
// them from the host and from another container, keeps them across a restart, refuses a
// conflict, and removes exactly their rules on disconnect.
func TestPrivilegedPublishedPorts(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	addUplink(t, l.host)
	mustNetwork(t, l.c, "web")
	a := mustSandbox(t, l.c, "a")
	b := mustSandbox(t, l.c, "b")
	mustConnect(t, l.c, "web", "b")
	before := saveRules(t, l.host)

	p, err := endpoint.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	ep := mustConnect(t, l.c, "web", "a", endpoint.WithPorts(p...), endpoint.WithPublishAll(drivers.PortBinding{ContainerPort: 70}))
	info := ep.Info()
	if len(info.Ports) != 2 || info.Ports[0].HostPort != 8080 || info.Ports[1].HostPort < bridge.DefaultPortRangeFirst {
		t.Fatalf("Info().Ports = %v, want 8080 and an ephemeral port", info.Ports)
	}
	ans, err := netns.Open(a.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer ans.Close()
	var ln80, ln70 net.Listener
	if err := ans.Do(func() error {
		var err error
		if ln80, err = net.Listen("tcp4", netip.AddrPortFrom(info.IPv4.Addr(), 80).String()); err != nil {
			return err
		}
		ln70, err = net.Listen("tcp4", netip.AddrPortFrom(info.IPv4.Addr(), 70).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln80.Close()
	defer ln70.Close()
	host := portsHostIP.Addr()
	for _, c := range []struct {
		name, from string
		to         netip.AddrPort
		ln         net.Listener
	}{
		{"host", l.host.Path(), netip.AddrPortFrom(host, 8080), ln80},
		{"host, ephemeral", l.host.Path(), netip.AddrPortFrom(host, info.Ports[1].HostPort), ln70},
		{"other container", b.Key(), netip.AddrPortFrom(host, 8080), ln80},
	} {
		if err := talk(c.from, c.to, c.ln); err != nil {
			t.Errorf("%s to %s: %v", c.name, c.to, err)
		}
	}

	// A conflict is refused, and leaves nothing.
	withA := saveRules(t, l.host)
	mustSandbox(t, l.c, "c")
	if _, err := l.c.Connect(t.Context(), "web", "c", endpoint.WithPorts(p...)); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect publishing a published port: %v, want ErrConflict", err)
	}
	if diff := cmp.Diff(withA, saveRules(t, l.host)); diff != "" {
		t.Errorf("a refused Connect changed the rules:\n%s", diff)
	}
	if got := links(t, l.host.Path()); len(got) != 7 { // lo, uplink0, peer0, cnm0, web's bridge, the veths of a and b
		t.Errorf("host links after a refused Connect: %v", got)
	}
	// A port a host service uses is refused too, naming it, and leaves nothing: no rule, no
	// endpoint, no lease (the address asked for can be taken at once).
	hostLn := listenAt(t, l.host, "0.0.0.0:9090")
	probe := info.IPv4.Addr().Next().Next().Next().Next()
	p9090, err := endpoint.ParsePortSpec("9090:80")
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.c.Connect(t.Context(), "web", "c", endpoint.WithPorts(p9090...), endpoint.WithIPv4(probe))
	var inUse *bridge.PortInUseError
	if !errors.Is(err, cnm.ErrConflict) || !errors.As(err, &inUse) || inUse.Port != 9090 {
		t.Errorf("Connect publishing a port a host service uses: %v, want a *bridge.PortInUseError for 9090", err)
	}
	if diff := cmp.Diff(withA, saveRules(t, l.host)); diff != "" {
		t.Errorf("a refused Connect changed the rules:\n%s", diff)
	}
	web, err := l.c.Network("web")
	if err != nil {
		t.Fatal(err)
	}
	// By name: Endpoint("c") also finds an endpoint whose ID starts with c.
	for _, e := range web.Endpoints() {
		if e.Name() == "c" {
			t.Errorf("the refused Connect left endpoint c (%s)", e.ID())
		}
	}
	if ep, err := web.CreateEndpoint(t.Context(), "probe", endpoint.WithIPv4(probe)); err != nil {
		t.Errorf("the refused Connect kept the lease of %v: %v", probe, err)
	} else if err := ep.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	hostLn.Close()
	if _, err := l.c.Connect(t.Context(), "web", "c", endpoint.WithPorts(drivers.PortBinding{ContainerPort: 0})); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Errorf("Connect with container port 0: %v, want ErrInvalidParameter", err)
	}

	// A restart keeps the ports, their rules once, and the reservation.
	l.c.Close()
	c2 := l.open(t)
	if diff := cmp.Diff(withA, saveRules(t, l.host)); diff != "" {
		t.Errorf("rules after a restart (-before +after):\n%s", diff)
	}
	n, err := c2.Network("web")
	if err != nil {
		t.Fatal(err)
	}
	ep2, err := n.Endpoint("a")
	if err != nil {
		t.Fatal(err)
	}
	if got := ep2.Info().Ports; !slices.Equal(got, info.Ports) {
		t.Errorf("ports after a restart = %v, want %v", got, info.Ports)
	}
	if err := talk(l.host.Path(), netip.AddrPortFrom(host, 8080), ln80); err != nil {
		t.Errorf("after a restart: %v", err)
	}
	// The restarted Controller's driver holds the published ports again.
	for _, port := range []uint16{8080, info.Ports[1].HostPort} {
		if err := bindIn(l.host, netip.AddrPortFrom(netip.IPv4Unspecified(), port)); !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("after a restart, a host bind of published port %d: %v, want EADDRINUSE", port, err)
		}
	}
	if _, err := c2.Connect(t.Context(), "web", "c", endpoint.WithPorts(p...)); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("after a restart, Connect publishing a published port: %v, want ErrConflict", err)
	}
	if err := c2.Disconnect(t.Context(), "web", "a"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, saveRules(t, l.host)); diff != "" {
		t.Errorf("rules after Disconnect (-before connect +after):\n%s", diff)
	}
	if err := bindIn(l.host, netip.AddrPortFrom(netip.IPv4Unspecified(), 8080)); err != nil {
		t.Errorf("after Disconnect, a host bind of 8080: %v", err)
	}
	mustConnect(t, c2, "web", "c", endpoint.WithPorts(p...)) // the port is free again
}

// listenIn listens on TCP address addr (IPv4 or IPv6) inside the namespace at path; cleanup
// closes it.
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	network := "tcp4"
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() {
		network = "tcp6"
	}
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// addUplink gives the host namespace ns an "uplink" with address portsHostIP, as a host's
// LAN interface: published ports are reached there.
func addUplink(t *testing.T, ns *netns.NS) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "peer0"}
	if err := h.LinkAdd(up); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: portsHostIP.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(up); err != nil {
		t.Fatal(err)
	}
}

// dialFrom opens (and closes) a TCP connection to to from the namespace at path.
func dialFrom(path string, to netip.AddrPort) error {
	ns, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", to.String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}
