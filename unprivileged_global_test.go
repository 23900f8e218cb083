package cnm_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// TestGlobalNetworks is the multi-host logic without privileges: two hosts, each a Controller
// on an in-memory machine, share an etcd server (started as storetest does: skipped without
// the etcd binary, failed when CI=true). A global network made on one appears on the other,
// its name is the cluster's, and it cannot be deleted while a host has an endpoint on it.
func TestGlobalNetworks(t *testing.T) {
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := fmt.Sprintf("t%d", time.Now().UnixNano())
	host := func(name string) *cnm.Controller {
		l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
		return l.open(t, func(cfg *cnm.Config) {
			cfg.NoPredefinedNetworks = true
			cfg.Drivers[globalDriver] = driverstest.NewFake(drivers.Capabilities{DataScope: drivers.GlobalScope})
			cfg.GlobalStore = openEtcd(t, ec.Endpoints(), prefix)
			cfg.Hostname, cfg.StoreTimeout = name, 2*time.Second
		})
	}
	a, b := host("host-a"), host("host-b")

	n, err := a.NewNetwork(ctx, "g1", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.90.0.0/24")))
	if err != nil {
		t.Fatalf("NewNetwork on a: %v", err)
	}
	if n.Scope() != drivers.GlobalScope {
		t.Errorf("scope = %v, want global", n.Scope())
	}
	waitFor(t, 10*time.Second, "host b does not see g1", func() bool { return hasNetwork(b, "g1") })
	nb, _ := b.Network("g1")
	if nb.ID() != n.ID() {
		t.Errorf("b sees g1 with ID %s, want %s", nb.ID(), n.ID())
	}
	if _, err := b.NewNetwork(ctx, "g1", globalDriver); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Errorf("NewNetwork(g1) on b = %v, want ErrAlreadyExists", err)
	}
	if _, err := b.NewNetwork(ctx, "g2", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.90.0.0/25"))); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("NewNetwork(g2) on g1's subnet on b = %v, want ErrConflict", err)
	}
	hosts, err := b.Hosts(ctx)
	if err != nil || len(hosts) != 2 {
		t.Errorf("Hosts() on b = %+v, %v; want host-a and host-b", hosts, err)
	}

	// Sandboxes on both hosts join g1; the addresses come from one global pool.
	mustSandbox(t, a, "sa")
	mustSandbox(t, b, "sb")
	ea := mustConnect(t, a, "g1", "sa")
	eb := mustConnect(t, b, "g1", "sb")
	if ea.Info().IPv4 == eb.Info().IPv4 || ea.Info().IfName != "eth0" || eb.Info().IfName != "eth0" {
		t.Errorf("endpoints: a %v %s, b %v %s; want two addresses, each eth0", ea.Info().IPv4, ea.Info().IfName, eb.Info().IPv4, eb.Info().IfName)
	}
	if err := b.DeleteNetwork(ctx, "g1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork(g1) on b with an endpoint there = %v, want ErrConflict", err)
	}
	if err := b.DeleteSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	err = b.DeleteNetwork(ctx, "g1")
	if !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), "host-a") {
		t.Fatalf("DeleteNetwork(g1) on b with an endpoint on a = %v, want ErrConflict naming host-a", err)
	}
	if err := a.DeleteSandbox(ctx, "sa"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteNetwork(ctx, "g1"); err != nil {
		t.Fatalf("DeleteNetwork(g1) on b: %v", err)
	}
	waitFor(t, 10*time.Second, "host a still has g1", func() bool { return !hasNetwork(a, "g1") })
	assertGlobalClean(t, openEtcd(t, ec.Endpoints(), prefix))
}
