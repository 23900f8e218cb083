package cnm_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/network"
)

// mustNetworkOf creates the network name of driver d.
func mustNetworkOf(t *testing.T, c *cnm.Controller, name, d string, opts ...network.Option) network.Network {
	t.Helper()
	n, err := c.NewNetwork(t.Context(), name, d, opts...)
	if err != nil {
		t.Fatalf("NewNetwork %s: %v", name, err)
	}
	return n
}

func mustNetworkNamed(t *testing.T, c *cnm.Controller, name string) network.Network {
	t.Helper()
	n, err := c.Network(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// hasLine reports whether one of lines starts with prefix and contains every part.
func hasLine(lines []string, prefix string, parts ...string) bool {
	return slices.ContainsFunc(lines, func(l string) bool {
		if !strings.HasPrefix(l, prefix) {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(l, p) {
				return false
			}
		}
		return true
	})
}

// TestPrivilegedNetworkAllocator: a driver's per-network allocation (a VNI) is made once, on
// create, kept in the record, handed back on restart without a second allocation, shown by
// inspect, freed once on delete and on a failed create, and an orphan a crash left is freed
// on the next start.
func TestPrivilegedNetworkAllocator(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	alloc := driverstest.NewAllocator(4096, 4097)
	host := nstest.NewNS(t)
	dataDir, runDir := t.TempDir(), t.TempDir()
	var fake *driverstest.Fake
	open := func() *cnm.Controller {
		fake = driverstest.NewFake(drivers.Capabilities{})
		c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true,
			Drivers: map[string]drivers.Driver{"vx": driverstest.AllocatingFake{Fake: fake, Allocator: alloc}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := open()
	a := mustNetworkOf(t, c, "a", "vx")
	if got := a.Inspect().Options[driverstest.AllocationKey]; got != "4096" {
		t.Fatalf("inspect options = %v, want the allocation %s=4096", a.Inspect().Options, driverstest.AllocationKey)
	}
	if !hasLine(fake.Calls(), "CreateNetwork net="+a.ID()[:12], "allocation="+driverstest.AllocationKey+"=4096") {
		t.Fatalf("driver calls = %q, want CreateNetwork with the allocation", fake.Calls())
	}
	b := mustNetworkOf(t, c, "b", "vx")
	// The range is full: the create fails whole, its subnet free again.
	if _, err := c.NewNetwork(ctx, "c", "vx", network.WithSubnet(netip.MustParsePrefix("10.77.0.0/24"))); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("create with the range exhausted = %v, want ErrUnavailable", err)
	}
	if err := c.DeleteNetwork(ctx, b.Name()); err != nil {
		t.Fatal(err)
	}
	if !hasLine(alloc.Calls(), "FreeNetwork net="+b.ID()[:12]) || hasLine(alloc.Calls(), "FreeNetwork net="+b.ID()[:12], "orphan") {
		t.Fatalf("allocator calls = %q, want b freed by delete", alloc.Calls())
	}
	// A driver that fails CreateNetwork: the allocation is freed with the rest.
	fake.FailOn("CreateNetwork", errors.New("boom"))
	if _, err := c.NewNetwork(ctx, "d", "vx", network.WithSubnet(netip.MustParsePrefix("10.77.0.0/24"))); err == nil {
		t.Fatal("create with a failing driver succeeded")
	}
	fake.FailOn("CreateNetwork", nil)
	if got := alloc.Numbers(); len(got) != 1 || got[drivers.NetworkID(a.ID())] != 4096 {
		t.Fatalf("allocations after the failed creates = %v, want only a's", got)
	}
	mustNetworkOf(t, c, "d", "vx", network.WithSubnet(netip.MustParsePrefix("10.77.0.0/24")))
	// An allocation whose network never got a record (a crash between the two).
	orphan := drivers.NetworkID(netobj.NewID())
	if _, err := alloc.AllocateNetwork(ctx, drivers.AllocateNetworkRequest{NetworkID: orphan, Name: "lost"}); err == nil {
		t.Fatal("the range should be full")
	}
	c.DeleteNetwork(ctx, "d")
	if _, err := alloc.AllocateNetwork(ctx, drivers.AllocateNetworkRequest{NetworkID: orphan, Name: "lost"}); err != nil {
		t.Fatal(err)
	}
	before := len(alloc.Calls())
	c.Close()

	c = open()
	if got := alloc.Calls()[before:]; len(got) != 1 || got[0] != "FreeNetwork net="+orphan.Short()+" orphan" {
		t.Fatalf("allocator calls on restart = %q, want only the orphan freed", got)
	}
	if !slices.ContainsFunc(c.Repairs(), func(r drivers.Repair) bool {
		return strings.Contains(r.Object, orphan.Short()) && r.Action == "released"
	}) {
		t.Fatalf("repairs = %v, want the orphan allocation released", c.Repairs())
	}
	if !hasLine(fake.Calls(), "CreateNetwork net="+a.ID()[:12], "allocation="+driverstest.AllocationKey+"=4096") {
		t.Fatalf("driver calls on restart = %q, want a re-created with its allocation", fake.Calls())
	}
	if err := c.DeleteNetwork(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if !hasLine(fake.Calls(), "DeleteNetwork net="+a.ID()[:12]) || hasLine(fake.Calls(), "DeleteNetwork", "forget") {
		t.Fatalf("driver calls = %q, want a cluster delete, not a forget", fake.Calls())
	}
	if got := alloc.Numbers(); len(got) != 0 {
		t.Fatalf("allocations left = %v", got)
	}
}

// joinRecorder is the p2p driver, recording the join requests it gets.
type joinRecorder struct {
	*p2pDriver
	mu   sync.Mutex
	reqs []drivers.JoinRequest
}

func (d *joinRecorder) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	d.mu.Lock()
	d.reqs = append(d.reqs, req)
	d.mu.Unlock()
	return d.p2pDriver.Join(ctx, req)
}

// TestPrivilegedJoinContextAndPorts: a driver's Join learns the sandbox, the endpoint and its
// aliases; ports on a driver without the Ports capability are refused before the driver sees
// the endpoint.
func TestPrivilegedJoinContextAndPorts(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	d := &joinRecorder{p2pDriver: &p2pDriver{hostPath: l.host.Path()}}
	if err := l.c.RegisterDriver(ctx, "p2p", d); err != nil {
		t.Fatal(err)
	}
	mustNetworkOf(t, l.c, "pp", "p2p", network.WithSubnet(netip.MustParsePrefix("10.71.0.0/24")))
	mustSandbox(t, l.c, "web", cnm.WithHostname("web.local"))
	ports, _ := endpoint.ParsePortSpec("8080:80")
	if _, err := l.c.Connect(ctx, "pp", "web", endpoint.WithPorts(ports...)); !errors.Is(err, cnm.ErrNotSupported) {
		t.Fatalf("ports on a driver without the capability = %v, want ErrNotSupported", err)
	}
	if _, err := l.c.Connect(ctx, "pp", "web", endpoint.WithAliases("bad name")); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("a bad alias = %v, want ErrInvalidParameter", err)
	}
	if len(d.reqs) != 0 {
		t.Fatalf("the driver was asked to join %d times by refused connects", len(d.reqs))
	}
	if _, err := l.c.Connect(ctx, "pp", "web", endpoint.WithIfName("way/too/long")); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("a bad interface name = %v, want ErrInvalidParameter", err)
	}
	ep := mustConnect(t, l.c, "pp", "web", endpoint.WithAliases("www", "front"), endpoint.WithIfName("data0"))
	if len(d.reqs) != 1 {
		t.Fatalf("joins = %d", len(d.reqs))
	}
	got := d.reqs[0]
	if got.SandboxID != "web" || got.Hostname != "web.local" || got.Endpoint != "web" || !slices.Equal(got.Aliases, []string{"www", "front"}) || got.IfName != "data0" {
		t.Fatalf("join request = sandbox %q hostname %q endpoint %q aliases %q ifname %q", got.SandboxID, got.Hostname, got.Endpoint, got.Aliases, got.IfName)
	}
	sb, _ := l.c.Sandbox("web")
	if links := links(t, sb.Key()); !slices.Equal(links, []string{"data0", "lo"}) {
		t.Fatalf("sandbox links = %v, want the wanted name data0", links)
	}
	// The name is taken now: a second endpoint wanting it is refused, with nothing left.
	mustNetwork(t, l.c, "br")
	if _, err := l.c.Connect(ctx, "br", "web", endpoint.WithIfName("data0")); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("a taken interface name = %v, want ErrAlreadyExists", err)
	}
	if eps := mustNetworkNamed(t, l.c, "br").Endpoints(); len(eps) != 0 {
		t.Fatalf("endpoints left by the refused connect: %v", eps)
	}
	if !slices.Equal(ep.Info().Aliases, []string{"www", "front"}) {
		t.Fatalf("endpoint aliases = %q", ep.Info().Aliases)
	}
	// Aliases are in the record: they survive a restart.
	l.c.Close()
	c := l.open(t)
	c.RegisterDriver(ctx, "p2p", &p2pDriver{hostPath: l.host.Path()})
	nw, err := c.Network("pp")
	if err != nil {
		t.Fatal(err)
	}
	e, err := nw.Endpoint("web")
	if err != nil || !slices.Equal(e.Info().Aliases, []string{"www", "front"}) {
		t.Fatalf("aliases after restart = %v (%v)", e, err)
	}
}

// TestPrivilegedGlobalNetworkAllocator: on a global network the allocation is made once in the
// cluster, by the creating host; every host's driver gets it; the deleting host frees it once
// and the others only forget the network; an orphan is freed by the sweep.
func TestPrivilegedGlobalNetworkAllocator(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "alloc")
	shared := driverstest.NewAllocator(4096, 8191)
	open := func(name string) (*cnm.Controller, *driverstest.Fake) {
		f := driverstest.NewFake(drivers.Capabilities{DataScope: drivers.GlobalScope})
		c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: nstest.NewNS(t).Path(), NoPredefinedNetworks: true,
			Drivers:     map[string]drivers.Driver{"gx": driverstest.AllocatingFake{Fake: f, Allocator: shared}},
			GlobalStore: gs, Hostname: name, HostTTL: 2 * time.Second, StoreTimeout: 2 * time.Second})
		if err != nil {
			t.Fatalf("cnm.New %s: %v", name, err)
		}
		t.Cleanup(func() { c.Close() })
		return c, f
	}
	ca, fa := open("host-a")
	cb, fb := open("host-b")
	nw, err := ca.NewNetwork(ctx, "g1", "gx")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts g1", func() bool { return hasNetwork(cb, "g1") })
	if got := shared.Calls(); len(got) != 1 || !strings.HasPrefix(got[0], "AllocateNetwork net="+nw.ID()[:12]) {
		t.Fatalf("allocator calls = %q, want one allocation for g1", got)
	}
	for host, f := range map[string]*driverstest.Fake{"host-a": fa, "host-b": fb} {
		if !hasLine(f.Calls(), "CreateNetwork net="+nw.ID()[:12], "allocation="+driverstest.AllocationKey+"=4096") {
			t.Fatalf("%s driver calls = %q, want CreateNetwork with the allocation", host, f.Calls())
		}
	}
	if err := cb.DeleteNetwork(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-a forgets g1", func() bool { return hasLine(fa.Calls(), "DeleteNetwork net="+nw.ID()[:12], "forget") })
	if !hasLine(fb.Calls(), "DeleteNetwork net="+nw.ID()[:12]) || hasLine(fb.Calls(), "DeleteNetwork", "forget") {
		t.Fatalf("host-b driver calls = %q, want the cluster delete", fb.Calls())
	}
	if got := shared.Calls(); len(got) != 2 || got[1] != "FreeNetwork net="+nw.ID()[:12] {
		t.Fatalf("allocator calls = %q, want g1 freed once, by the deleting host", got)
	}
	// An orphan: allocated, never recorded. The sweep frees it once it has been seen long enough.
	orphan := drivers.NetworkID(netobj.NewID())
	if _, err := shared.AllocateNetwork(ctx, drivers.AllocateNetworkRequest{NetworkID: orphan, Name: "lost"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the sweep frees the orphan allocation", func() bool { return len(shared.Numbers()) == 0 })
	reclaimed := append(ca.Reclaimed(), cb.Reclaimed()...)
	if !slices.ContainsFunc(reclaimed, func(r drivers.Repair) bool { return strings.Contains(r.Object, orphan.Short()) }) {
		t.Fatalf("reclaimed = %v, want the orphan allocation", reclaimed)
	}
	assertGlobalClean(t, gs)
}
