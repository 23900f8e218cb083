package cnm_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
)

// isleDriver is the p2p driver without a way out, as an overlay is: its joins offer no
// default gateway and ask the Controller for the gateway service.
type isleDriver struct{ p2pDriver }

func (d *isleDriver) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	res, err := d.p2pDriver.Join(ctx, req)
	res.Gateway, res.NeedGateway = netip.Addr{}, true
	return res, err
}

// defaultVia returns the IPv4 default route's gateway and device in the namespace at path.
func defaultVia(t *testing.T, path string) (netip.Addr, string) {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			l, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				t.Fatal(err)
			}
			gw, _ := netip.AddrFromSlice(r.Gw)
			return gw.Unmap(), l.Attrs().Name
		}
	}
	return netip.Addr{}, ""
}

// TestPrivilegedGatewayService: endpoints whose driver asks for a way out get one through the
// per-host gateway network (Docker's docker_gwbridge): one attachment per sandbox, giving it
// its default route, kept across a restart, removed with the last endpoint that asked.
func TestPrivilegedGatewayService(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	isle := &isleDriver{p2pDriver{hostPath: l.host.Path()}}
	if err := l.c.RegisterDriver(ctx, "isle", isle); err != nil {
		t.Fatal(err)
	}
	mustNetworkOf(t, l.c, "i1", "isle", network.WithSubnet(netip.MustParsePrefix("10.74.1.0/24")))
	mustNetworkOf(t, l.c, "i2", "isle", network.WithSubnet(netip.MustParsePrefix("10.74.2.0/24")))
	sb := mustSandbox(t, l.c, "c1")
	mustConnect(t, l.c, "i1", "c1")
	gwnet, err := l.c.Network(cnm.GatewayNetwork)
	if err != nil {
		t.Fatalf("gateway network after the first join that asks for it: %v", err)
	}
	in := gwnet.Inspect()
	gwc, ok := in.Containers["c1"]
	if !ok || in.Options["com.docker.network.bridge.enable_icc"] != "false" {
		t.Fatalf("gateway network inspect = %+v, want c1 attached and ICC off", in)
	}
	gw := netip.MustParseAddr(in.IPAM.Config[0].Gateway)
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "eth1", "lo"}) {
		t.Fatalf("sandbox links = %v, want eth0 (i1) and eth1 (gateway network)", got)
	}
	if via, dev := defaultVia(t, sb.Key()); via != gw || dev != "eth1" {
		t.Fatalf("default route via %v dev %s, want via %v dev eth1", via, dev, gw)
	}
	pingOK(t, sb, gw)
	// A second such endpoint shares the attachment.
	mustConnect(t, l.c, "i2", "c1")
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "eth1", "eth2", "lo"}) {
		t.Fatalf("sandbox links = %v, want one gateway attachment for two endpoints", got)
	}
	if err := l.c.Disconnect(ctx, "i1", "c1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := gwnet.Inspect().Containers["c1"]; !ok {
		t.Fatal("gateway attachment removed while i2 still claims it")
	}

	// The claim survives a restart (it is in i2's endpoint record).
	l.c.Close()
	c := l.open(t)
	if err := c.RegisterDriver(ctx, "isle", &isleDriver{p2pDriver{hostPath: l.host.Path()}}); err != nil {
		t.Fatal(err)
	}
	sb = mustGet(t, c, "c1")
	if err := c.Disconnect(ctx, "i2", "c1"); err != nil {
		t.Fatal(err)
	}
	gwnet, err = c.Network(cnm.GatewayNetwork)
	if err != nil {
		t.Fatal(err)
	}
	if got := gwnet.Inspect().Containers; len(got) != 0 {
		t.Fatalf("gateway network containers after the last claim left = %v, want none", got)
	}
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("sandbox links = %v, want only lo", got)
	}
	if gwc.IPv4Address == "" {
		t.Fatal("the attachment had no address")
	}
	// A sandbox deleted with a claim drops it: the next sandbox of that name starts clean.
	mustConnect(t, c, "i1", "c1")
	if err := c.DeleteSandbox(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if got := gwnet.Inspect().Containers; len(got) != 0 {
		t.Fatalf("gateway network containers after DeleteSandbox = %v", got)
	}
	sb = mustSandbox(t, c, "c1")
	mustConnect(t, c, "i1", "c1")
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "eth1", "lo"}) {
		t.Fatalf("new sandbox c1 links = %v, want a fresh gateway attachment", got)
	}
}

// gwPortsDriver is the isle driver whose published ports go through the gateway network, as
// the overlay's do (Capabilities.GatewayPorts).
type gwPortsDriver struct{ isleDriver }

func (d *gwPortsDriver) Capabilities() drivers.Capabilities {
	c := d.isleDriver.Capabilities()
	c.GatewayPorts = true
	return c
}

// TestPrivilegedGatewayPorts: ports published on an endpoint of a driver with GatewayPorts are
// published on its sandbox's gateway endpoint (Docker's way for overlay containers): reachable
// on the host's address, shown as bound on the endpoint, fixed by the sandbox's first such
// endpoint (a second one with other ports is refused, leaving nothing), gone with the last
// claim, and back after a restart.
func TestPrivilegedGatewayPorts(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	addUplink(t, l.host)
	register := func(c *cnm.Controller) {
		t.Helper()
		if err := c.RegisterDriver(ctx, "isle", &gwPortsDriver{isleDriver{p2pDriver{hostPath: l.host.Path()}}}); err != nil {
			t.Fatal(err)
		}
	}
	register(l.c)
	mustNetworkOf(t, l.c, "i1", "isle", network.WithSubnet(netip.MustParsePrefix("10.75.1.0/24")))
	mustNetworkOf(t, l.c, "i2", "isle", network.WithSubnet(netip.MustParsePrefix("10.75.2.0/24")))
	internal := mustNetworkOf(t, l.c, "i3", "isle", network.WithSubnet(netip.MustParsePrefix("10.75.3.0/24")), network.WithInternal())
	sb := mustSandbox(t, l.c, "c1")
	p, err := endpoint.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := internal.CreateEndpoint(ctx, "x", endpoint.WithPorts(p...)); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("ports on an internal network = %v, want ErrInvalidParameter", err)
	}
	ep := mustConnect(t, l.c, "i1", "c1", endpoint.WithPorts(p...), endpoint.WithPublishAll(drivers.PortBinding{ContainerPort: 70}))
	ports := ep.Info().Ports
	if len(ports) != 2 || ports[0].HostPort != 8080 || ports[1].HostPort < bridge.DefaultPortRangeFirst {
		t.Fatalf("endpoint ports = %v, want 8080 and an ephemeral port", ports)
	}
	gwnet, err := l.c.Network(cnm.GatewayNetwork)
	if err != nil {
		t.Fatal(err)
	}
	gwEp, err := gwnet.Endpoint("c1")
	if err != nil || !slices.Equal(gwEp.Info().Ports, ports) {
		t.Fatalf("gateway endpoint of c1 = %v (%v), want the ports %v", gwEp, err, ports)
	}
	ln80 := listenIn(t, sb.Key(), "0.0.0.0:80")
	ln70 := listenIn(t, sb.Key(), "0.0.0.0:70")
	host := portsHostIP.Addr()
	if err := talk(l.host.Path(), netip.AddrPortFrom(host, 8080), ln80); err != nil {
		t.Fatalf("host to %v:8080: %v", host, err)
	}
	if err := talk(l.host.Path(), netip.AddrPortFrom(host, ports[1].HostPort), ln70); err != nil {
		t.Fatalf("host to the ephemeral port %d: %v", ports[1].HostPort, err)
	}

	// A second endpoint of c1 through the gateway with other ports: refused, nothing made.
	linksBefore, rulesBefore := links(t, sb.Key()), saveRules(t, l.host)
	q, _ := endpoint.ParsePortSpec("9090:90")
	if _, err := l.c.Connect(ctx, "i2", "c1", endpoint.WithPorts(q...)); !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), "9090") {
		t.Fatalf("second endpoint with other ports = %v, want ErrConflict naming 9090", err)
	}
	if got := links(t, sb.Key()); !slices.Equal(got, linksBefore) {
		t.Errorf("links after the refused connect = %v, want %v", got, linksBefore)
	}
	if got := saveRules(t, l.host); got != rulesBefore {
		t.Errorf("rules changed by the refused connect:\n%s\nwant\n%s", got, rulesBefore)
	}
	mustConnect(t, l.c, "i2", "c1") // without ports it shares the attachment

	// The ports survive a restart, with the gateway endpoint.
	l.c.Close()
	c := l.open(t)
	register(c)
	if err := talk(l.host.Path(), netip.AddrPortFrom(host, 8080), ln80); err != nil {
		t.Fatalf("after a restart, host to :8080: %v", err)
	}
	n1, err := c.Network("i1")
	if err != nil {
		t.Fatal(err)
	}
	if ep, err := n1.Endpoint("c1"); err != nil || !slices.Equal(ep.Info().Ports, ports) {
		t.Fatalf("after a restart, c1's endpoint on i1 = %v (%v), want ports %v", ep, err, ports)
	}
	// Gone with the last claim.
	for _, n := range []string{"i1", "i2"} {
		if err := c.Disconnect(ctx, n, "c1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := dialFrom(l.host.Path(), netip.AddrPortFrom(host, 8080)); err == nil {
		t.Fatal(":8080 still accepts connections after the last claim on the gateway left")
	}
}
