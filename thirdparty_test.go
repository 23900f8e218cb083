package cnm_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// p2pDriver is a third-party driver written against the public API only: each endpoint is a
// veth pair made in the host namespace, whose host end holds the network's gateway address,
// and whose other end the sandbox moves in (the JoinResult.SrcName path).
type p2pDriver struct {
	hostPath string

	mu  sync.Mutex // guards following
	gws map[drivers.NetworkID]netip.Prefix
}

var _ drivers.Driver = (*p2pDriver)(nil)

func (d *p2pDriver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.LocalScope}
}

func (d *p2pDriver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	if len(req.IPv4) != 1 {
		return errors.New("p2p: want one IPv4 subnet")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gws == nil {
		d.gws = map[drivers.NetworkID]netip.Prefix{}
	}
	d.gws[req.NetworkID] = netip.PrefixFrom(req.IPv4[0].Gateway, req.IPv4[0].Subnet.Bits())
	return nil
}

func (d *p2pDriver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.gws, req.NetworkID)
	return nil
}

func (d *p2pDriver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	return drivers.CreateEndpointResult{}, nil
}

func (d *p2pDriver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	return nil
}

func (d *p2pDriver) handle() (*netlink.Handle, error) {
	ns, err := vnetns.GetFromPath(d.hostPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func (d *p2pDriver) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	d.mu.Lock()
	gw, ok := d.gws[req.NetworkID]
	d.mu.Unlock()
	if !ok {
		return drivers.JoinResult{}, errors.New("p2p: unknown network")
	}
	h, err := d.handle()
	if err != nil {
		return drivers.JoinResult{}, err
	}
	defer h.Close()
	host, peer := "p2p"+string(req.EndpointID)[:8], "p2q"+string(req.EndpointID)[:8]
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer}
	if err := h.LinkAdd(veth); err != nil {
		return drivers.JoinResult{}, err
	}
	err = h.AddrAdd(veth, &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}})
	if err == nil {
		err = h.LinkSetUp(veth)
	}
	if err != nil {
		h.LinkDel(veth)
		return drivers.JoinResult{}, err
	}
	return drivers.JoinResult{SrcName: peer, Gateway: gw.Addr()}, nil
}

func (d *p2pDriver) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	h, err := d.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName("p2p" + string(req.EndpointID)[:8])
	if err != nil {
		return nil // gone with its peer
	}
	return h.LinkDel(l)
}

// TestPrivilegedThirdPartyDriver registers a driver the way an orchestrator would and uses it
// end to end: its interface is moved into the sandbox, addressed, and routes to the gateway.
func TestPrivilegedThirdPartyDriver(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	if err := l.c.RegisterDriver(ctx, "p2p", &p2pDriver{hostPath: l.host.Path()}); err != nil {
		t.Fatal(err)
	}
	if err := l.c.RegisterDriver(ctx, "p2p", &p2pDriver{}); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("second registration = %v, want ErrAlreadyExists", err)
	}
	if !slices.Contains(l.c.Drivers(), "p2p") {
		t.Fatalf("drivers = %v", l.c.Drivers())
	}
	if _, err := l.c.NewNetwork(ctx, "pp", "p2p", network.WithSubnet(netip.MustParsePrefix("10.70.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	sb := mustSandbox(t, l.c, "x")
	ep := mustConnect(t, l.c, "pp", "x")
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Fatalf("sandbox links = %v, want the moved interface renamed eth0", got)
	}
	if ep.Info().IfName != "eth0" || ep.Info().Gateway != netip.MustParseAddr("10.70.0.1") {
		t.Fatalf("endpoint info = %+v", ep.Info())
	}
	pingOK(t, sb, netip.MustParseAddr("10.70.0.1"))
	if err := l.c.Disconnect(ctx, "pp", "x"); err != nil {
		t.Fatal(err)
	}
	if err := l.c.DeleteNetwork(ctx, "pp"); err != nil {
		t.Fatal(err)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
}

// TestPrivilegedIPAMDriver: a network names its IPAM driver, registered like a network driver;
// the choice survives a restart, and an unknown one is refused with nothing made.
func TestPrivilegedIPAMDriver(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	newCGNAT := func() ipam.Allocator {
		a, err := ipam.NewDefault(ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Base: netip.MustParsePrefix("100.64.0.0/10"), Size: 24}}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	host := nstest.NewNS(t)
	dataDir, runDir := t.TempDir(), t.TempDir()
	open := func() *cnm.Controller {
		c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(),
			IPAMDrivers: map[string]ipam.Allocator{"cgnat": newCGNAT()}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open()
	if got := c.IPAMDrivers(); !slices.Equal(got, []string{"cgnat", "default"}) {
		t.Fatalf("IPAM drivers = %v", got)
	}
	if err := c.RegisterIPAMDriver(ctx, "cgnat", newCGNAT()); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("second registration = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewNetwork(ctx, "x", "bridge", network.WithIPAMDriver("nosuch")); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("unknown IPAM driver = %v, want ErrNotFound", err)
	}
	nw, err := c.NewNetwork(ctx, "cg", "bridge", network.WithIPAMDriver("cgnat"))
	if err != nil {
		t.Fatal(err)
	}
	in := nw.Inspect()
	if in.IPAM.Driver != "cgnat" || in.IPAM.Config[0].Subnet != "100.64.0.0/24" {
		t.Fatalf("inspect IPAM = %+v, want driver cgnat and 100.64.0.0/24", in.IPAM)
	}
	sb, err := c.NewSandbox(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := c.Connect(ctx, "cg", "s")
	if err != nil {
		t.Fatal(err)
	}
	if ep.Info().IPv4.String() != "100.64.0.2/24" {
		t.Fatalf("endpoint address = %v", ep.Info().IPv4)
	}
	pingOK(t, sb, netip.MustParseAddr("100.64.0.1"))
	c.Close()

	c = open()
	defer c.Close()
	nw, err = c.Network("cg")
	if err != nil {
		t.Fatal(err)
	}
	if got := nw.Inspect().IPAM.Driver; got != "cgnat" {
		t.Fatalf("after restart IPAM driver = %q", got)
	}
	// The restored cgnat allocator holds the endpoint's lease: the next address is new.
	if _, err := c.NewSandbox(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	ep2, err := c.Connect(ctx, "cg", "t")
	if err != nil {
		t.Fatal(err)
	}
	if ep2.Info().IPv4.Addr() == ep.Info().IPv4.Addr() {
		t.Fatalf("address %v handed out twice after restart", ep2.Info().IPv4)
	}
	for _, id := range []string{"s", "t"} {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(ctx, "cg"); err != nil {
		t.Fatal(err)
	}
	waitLinks(t, host.Path(), cnm.DefaultBridge, "lo")
}

// TestPrivilegedIPAMDriverKeepsState: an IPAM driver that keeps its state across restarts (here
// one allocator shared by two Controllers, as one backed by a store would be) is adopted on
// restart, not asked twice, and a lease no live endpoint holds (left by a crash) is reclaimed
// and reported.
func TestPrivilegedIPAMDriverKeepsState(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	shared, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	host := nstest.NewNS(t)
	dataDir, runDir := t.TempDir(), t.TempDir()
	open := func() *cnm.Controller {
		c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(),
			IPAMDrivers: map[string]ipam.Allocator{"kept": shared}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open()
	if _, err := c.NewNetwork(ctx, "p", "bridge", network.WithIPAMDriver("kept"), network.WithSubnet(netip.MustParsePrefix("10.90.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	sb, err := c.NewSandbox(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := c.Connect(ctx, "p", "s")
	if err != nil {
		t.Fatal(err)
	}
	pool := ipam.MakePoolID(ipam.LocalSpace, netip.MustParsePrefix("10.90.0.0/24"))
	leaked := netip.MustParseAddr("10.90.0.77")
	if _, err := shared.RequestAddress(ctx, pool, leaked); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c = open()
	defer c.Close()
	var reps []string
	for _, r := range c.Repairs() {
		reps = append(reps, r.String())
	}
	if !slices.Equal(reps, []string{"released address 10.90.0.77 of network p: no live endpoint holds it"}) {
		t.Fatalf("repairs = %q, want the leaked lease released", reps)
	}
	nw, err := c.Network("p")
	if err != nil {
		t.Fatalf("network p not restored: %v", err)
	}
	if got := nw.Inspect().Containers["s"].IPv4Address; got != ep.Info().IPv4.String() {
		t.Fatalf("restored endpoint address = %q, want %v", got, ep.Info().IPv4)
	}
	pingOK(t, sb, netip.MustParseAddr("10.90.0.1"))
	if _, err := shared.RequestAddress(ctx, pool, leaked); err != nil {
		t.Fatalf("reclaimed %v cannot be requested again: %v", leaked, err)
	}
	if _, err := shared.RequestAddress(ctx, pool, ep.Info().IPv4.Addr()); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Fatalf("the live endpoint's address is free after restart: %v", err)
	}
	if err := c.DeleteSandbox(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "p"); err != nil {
		t.Fatal(err)
	}
}
