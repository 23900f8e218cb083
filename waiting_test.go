package cnm_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/network"
)

// TestPrivilegedLateDriverKeepsRecords: a driver registered after New is what an orchestrator
// with its own drivers does. On the next start, before it registers again, its network and
// endpoints must not be pruned: they wait, keep their name, subnet and interfaces, and are
// restored whole when the driver registers.
func TestPrivilegedLateDriverKeepsRecords(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	if err := l.c.RegisterDriver(ctx, "p2p", &p2pDriver{hostPath: l.host.Path()}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.c.NewNetwork(ctx, "pp", "p2p", network.WithSubnet(netip.MustParsePrefix("10.70.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, l.c, "a")
	joined := mustConnect(t, l.c, "pp", "a")
	nw, _ := l.c.Network("pp")
	idle, err := nw.CreateEndpoint(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	l.c.Close()

	// Restart without the driver.
	c := l.open(t)
	for _, r := range c.Repairs() {
		if strings.Contains(r.Action, "removed") {
			t.Errorf("repair %q: nothing may be removed for a missing driver", r)
		}
	}
	w := c.Waiting()
	if len(w) != 1 || w[0].Name != "pp" || w[0].Driver != "p2p" || w[0].Endpoints != 2 || !strings.Contains(w[0].Reason, "p2p") {
		t.Fatalf("waiting = %+v, want network pp of driver p2p with its 2 endpoints, the reason naming p2p", w)
	}
	if _, err := c.Network("pp"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("Network(pp) while waiting = %v, want ErrUnavailable", err)
	}
	if _, err := c.NewNetwork(ctx, "pp", "bridge"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("a new network with the waiting one's name = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewNetwork(ctx, "steal", "bridge", network.WithSubnet(netip.MustParsePrefix("10.70.0.0/24"))); err == nil || !strings.Contains(err.Error(), `"pp"`) {
		t.Fatalf("a new network on the waiting one's subnet = %v, want an overlap naming pp", err)
	}
	sb := mustGet(t, c, "a")
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Fatalf("sandbox a links while its network waits = %v, want eth0 kept", got)
	}
	// A new attachment must not take the waiting endpoint's interface name.
	if ep := mustConnect(t, c, cnm.DefaultNetwork, "a"); ep.Info().IfName != "eth1" {
		t.Fatalf("new attachment of a got %s, want eth1 (eth0 is held)", ep.Info().IfName)
	}

	if err := c.RegisterDriver(ctx, "p2p", &p2pDriver{hostPath: l.host.Path()}); err != nil {
		t.Fatalf("late registration: %v", err)
	}
	if w := c.Waiting(); len(w) != 0 {
		t.Fatalf("waiting after registration = %+v", w)
	}
	nw, err = c.Network("pp")
	if err != nil {
		t.Fatal(err)
	}
	in := nw.Inspect()
	if got := in.Containers["a"].IPv4Address; got != joined.Info().IPv4.String() {
		t.Fatalf("restored joined endpoint address = %q, want %v", got, joined.Info().IPv4)
	}
	ep, err := nw.Endpoint("idle")
	if err != nil || ep.ID() != idle.ID() {
		t.Fatalf("idle endpoint after registration: %v, %v", ep, err)
	}
	if info := nw.Inspect(); len(info.Containers) != 1 {
		t.Fatalf("containers = %v", info.Containers)
	}
	pingOK(t, sb, netip.MustParseAddr("10.70.0.1"))
	// The restored endpoint is back in its sandbox: disconnecting removes its interface.
	if err := c.Disconnect(ctx, "pp", "a"); err != nil {
		t.Fatal(err)
	}
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth1", "lo"}) {
		t.Fatalf("sandbox a links after disconnect = %v", got)
	}
	c.Close()

	// The records survived all of it: a start with the driver in Config finds the idle one.
	c2, err := cnm.New(ctx, cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(),
		Drivers: map[string]drivers.Driver{"p2p": &p2pDriver{hostPath: l.host.Path()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	nw, err = c2.Network("pp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nw.Endpoint("idle"); err != nil {
		t.Fatalf("idle endpoint after a second restart: %v", err)
	}
	if err := c2.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	ep, err = nw.Endpoint("idle")
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c2.DeleteNetwork(ctx, "pp"); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedLateIPAMDriverKeepsRecords: the same for an IPAM driver registered after New.
func TestPrivilegedLateIPAMDriverKeepsRecords(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	cgnat := func() ipam.Allocator {
		a, err := ipam.NewDefault(ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Base: netip.MustParsePrefix("100.64.0.0/10"), Size: 24}}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	l := newLab(t)
	if err := l.c.RegisterIPAMDriver(ctx, "cgnat", cgnat()); err != nil {
		t.Fatal(err)
	}
	mustNetwork(t, l.c, "cg", network.WithIPAMDriver("cgnat"))
	mustSandbox(t, l.c, "s")
	ep := mustConnect(t, l.c, "cg", "s")
	l.c.Close()

	c := l.open(t)
	if w := c.Waiting(); len(w) != 1 || w[0].Name != "cg" || w[0].IPAMDriver != "cgnat" || w[0].Endpoints != 1 {
		t.Fatalf("waiting = %+v, want cg waiting for IPAM driver cgnat with its endpoint", w)
	}
	sb := mustGet(t, c, "s")
	if got := links(t, sb.Key()); !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Fatalf("sandbox links while its network waits = %v", got)
	}
	if err := c.RegisterIPAMDriver(ctx, "cgnat", cgnat()); err != nil {
		t.Fatal(err)
	}
	nw, err := c.Network("cg")
	if err != nil {
		t.Fatal(err)
	}
	if got := nw.Inspect().Containers["s"].IPv4Address; got != ep.Info().IPv4.String() {
		t.Fatalf("restored address = %q, want %v", got, ep.Info().IPv4)
	}
	pingOK(t, sb, netip.MustParseAddr("100.64.0.1"))
	// The restored allocator holds the endpoint's address again.
	mustSandbox(t, c, "t")
	if ep2 := mustConnect(t, c, "cg", "t"); ep2.Info().IPv4.Addr() == ep.Info().IPv4.Addr() {
		t.Fatalf("address %v handed out twice", ep2.Info().IPv4)
	}
}

// TestPrivilegedGlobalLateDriver: a global network whose driver a host registers late. On
// restart the host's endpoint records stay in the global store (another host may not reclaim
// or delete them) and the network waits; a second host without the driver sees it waiting
// too; registering the driver restores both.
func TestPrivilegedGlobalLateDriver(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "late")
	type host struct{ ns, data, run, name string }
	open := func(h host, withDriver bool) *cnm.Controller {
		cfg := cnm.Config{DataDir: h.data, RunDir: h.run, HostNetns: h.ns, NoPredefinedNetworks: true,
			GlobalStore: gs, Hostname: h.name, StoreTimeout: 2 * time.Second}
		if withDriver {
			cfg.Drivers = map[string]drivers.Driver{"gp2p": &gp2pDriver{p2pDriver{hostPath: h.ns}}}
		}
		c, err := cnm.New(ctx, cfg)
		if err != nil {
			t.Fatalf("cnm.New %s: %v", h.name, err)
		}
		t.Cleanup(func() {
			for _, sb := range c.Sandboxes() {
				c.DeleteSandbox(context.Background(), sb.ID())
			}
			c.Close()
		})
		return c
	}
	a := host{nstest.NewNS(t).Path(), t.TempDir(), t.TempDir(), "host-a"}
	b := host{nstest.NewNS(t).Path(), t.TempDir(), t.TempDir(), "host-b"}
	ca := open(a, true)
	nw, err := ca.NewNetwork(ctx, "gx", "gp2p", network.WithSubnet(netip.MustParsePrefix("10.73.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, ca, "sb1")
	ep := mustConnect(t, ca, "gx", "sb1")
	ca.Close()

	ca = open(a, false)
	if w := ca.Waiting(); len(w) != 1 || w[0].Name != "gx" || w[0].Scope != drivers.GlobalScope || w[0].Endpoints != 1 {
		t.Fatalf("host-a waiting = %+v, want gx (global) with its endpoint", w)
	}
	if recs, err := gs.List(ctx, epobj.KeyPrefix+nw.ID()+"/"); err != nil || len(recs) != 1 {
		t.Fatalf("global endpoint records after a restart without the driver: %d (%v), want 1", len(recs), err)
	}
	cb := open(b, false)
	if w := cb.Waiting(); len(w) != 1 || w[0].ID != nw.ID() || w[0].Endpoints != 0 {
		t.Fatalf("host-b waiting = %+v, want gx with no endpoint of its own", w)
	}
	if err := cb.DeleteNetwork(ctx, "gx"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("delete of a waiting network = %v, want ErrUnavailable", err)
	}

	if err := ca.RegisterDriver(ctx, "gp2p", &gp2pDriver{p2pDriver{hostPath: a.ns}}); err != nil {
		t.Fatal(err)
	}
	got, err := ca.Network("gx")
	if err != nil {
		t.Fatal(err)
	}
	if eps := got.Endpoints(); len(eps) != 1 || eps[0].ID() != ep.ID() || eps[0].Info().SandboxID != "sb1" {
		t.Fatalf("host-a endpoints after registration = %v, want %s joined to sb1", eps, ep.ID())
	}
	pingOK(t, mustGet(t, ca, "sb1"), netip.MustParseAddr("10.73.0.1"))
	if err := cb.RegisterDriver(ctx, "gp2p", &gp2pDriver{p2pDriver{hostPath: b.ns}}); err != nil {
		t.Fatal(err)
	}
	if !hasNetwork(cb, "gx") || len(cb.Waiting()) != 0 {
		t.Fatalf("host-b after registration: networks %v, waiting %+v", networkNames(cb), cb.Waiting())
	}
	// Deleting it from host-b is refused while host-a has the endpoint, then goes through.
	if err := cb.DeleteNetwork(ctx, "gx"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("delete from host-b with host-a's endpoint = %v, want ErrConflict", err)
	}
	if err := ca.DeleteSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if err := cb.DeleteNetwork(ctx, "gx"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-a forgets gx", func() bool { return !hasNetwork(ca, "gx") })
	assertGlobalClean(t, gs)
}
