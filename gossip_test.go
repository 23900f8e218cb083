package cnm_test

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
)

// tableDriver is a global-scope fake driver that needs the gossip plane, as the overlay does.
type tableDriver struct {
	*driverstest.Fake
	mu sync.Mutex
	g  drivers.Gossip
}

var _ drivers.GossipUser = (*tableDriver)(nil)

func (d *tableDriver) UseGossip(g drivers.Gossip) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.g = g
	return nil
}

func (d *tableDriver) gossip() drivers.Gossip {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.g
}

func newTableDriver() *tableDriver {
	return &tableDriver{Fake: driverstest.NewFake(drivers.Capabilities{DataScope: drivers.GlobalScope})}
}

// TestPrivilegedGossipPlane: the Controller starts the gossip plane from Config.Gossip, joins
// its peers, hands it to the drivers that need it, and closes it; drivers on two hosts share
// a network's table through it and hear the key rotations. Without a plane, such a driver's
// networks are refused.
func TestPrivilegedGossipPlane(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "gossip")
	key, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	open := func(name string, d *tableDriver, peers ...string) *cnm.Controller {
		c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: nstest.NewNS(t).Path(), NoPredefinedNetworks: true,
			Drivers:     map[string]drivers.Driver{"gt": d},
			GlobalStore: gs, Hostname: name, StoreTimeout: 2 * time.Second,
			Gossip: &gossip.Config{BindAddr: netip.MustParseAddr("127.0.0.1"), Keys: [][]byte{key},
				RotationInterval: 2 * time.Second, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, GossipInterval: 50 * time.Millisecond},
			GossipPeers: peers,
		})
		if err != nil {
			t.Fatalf("cnm.New %s: %v", name, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	da, db := newTableDriver(), newTableDriver()
	ca := open("host-a", da)
	cb := open("host-b", db, ca.GossipNode().LocalAddr().String())
	ga, gb := da.gossip(), db.gossip()
	if ga == nil || gb == nil || ga.LocalName() != "host-a" || gb.LocalName() != "host-b" {
		t.Fatalf("drivers got gossip planes %v and %v, want host-a's and host-b's", ga, gb)
	}
	waitFor(t, 10*time.Second, "both hosts in the gossip cluster", func() bool { return ca.GossipNode().NumAlive() == 2 })

	nw, err := ca.NewNetwork(ctx, "g1", "gt")
	if err != nil {
		t.Fatal(err)
	}
	nid := drivers.NetworkID(nw.ID())
	for _, g := range []drivers.Gossip{ga, gb} {
		if err := g.JoinNetwork(nid); err != nil {
			t.Fatal(err)
		}
	}
	changes, cancel := gb.Watch(nid, "peers")
	defer cancel()
	// next waits for host-b's next event of the table and checks it.
	next := func(want string) {
		t.Helper()
		select {
		case ev := <-changes:
			if got := strings.Join([]string{ev.Type.String(), ev.Key, string(ev.Value), ev.Owner}, " "); got != want {
				t.Fatalf("host-b saw %q, want %q", got, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("host-b saw nothing in 15s, want %q", want)
		}
	}
	if err := ga.Put(nid, "peers", "ep-a", []byte("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	next("create ep-a 10.0.0.2 host-a")
	if err := ga.Put(nid, "peers", "ep-a", []byte("10.0.0.3")); err != nil { // an update
		t.Fatal(err)
	}
	next("update ep-a 10.0.0.3 host-a")
	if es := gb.Entries(nid, "peers"); len(es) != 1 || string(es[0].Value) != "10.0.0.3" || es[0].Owner != "host-a" {
		t.Fatalf("host-b entries = %v", es)
	}
	if err := gb.Put(nid, "peers", "ep-a", []byte("x")); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("host-b writing host-a's entry = %v, want ErrConflict", err)
	}
	if err := ga.Delete(nid, "peers", "ep-a"); err != nil {
		t.Fatal(err)
	}
	next("delete ep-a 10.0.0.3 host-a")
	if err := ga.Delete(nid, "peers", "ep-a"); err != nil {
		t.Fatalf("deleting a deleted entry = %v, want nil", err)
	}

	evs := cb.Events(ctx)
	keys, stopKeys := gb.WatchKeys()
	defer stopKeys()
	select {
	case ev := <-keys:
		if ev.Primary == "" || len(ev.Keys) == 0 || ev.Phase == "" {
			t.Fatalf("key event = %+v", ev)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no key rotation seen in 20s with a 2s rotation interval")
	}
	waitFor(t, 10*time.Second, "a KeyRotated event", func() bool {
		for {
			select {
			case ev := <-evs:
				if ev.Kind == events.KeyRotated && ev.Key.Primary != "" && ev.Key.Phase != "" {
					return true
				}
			default:
				return false
			}
		}
	})

	// Without a gossip plane, the driver's networks are refused.
	c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: nstest.NewNS(t).Path(), NoPredefinedNetworks: true,
		Drivers: map[string]drivers.Driver{"gt": newTableDriver()}, GlobalStore: gs, Hostname: "host-c", StoreTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.NewNetwork(ctx, "g2", "gt"); !errors.Is(err, cnm.ErrNotSupported) || !strings.Contains(err.Error(), "Config.Gossip") {
		t.Fatalf("a gossip driver's network without a plane = %v, want ErrNotSupported naming Config.Gossip", err)
	}
	if w := c.Waiting(); len(w) != 1 || w[0].Name != "g1" || !strings.Contains(w[0].Reason, "gossip") {
		t.Fatalf("host-c waiting = %+v, want g1 waiting for a gossip plane", w)
	}
	if _, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: nstest.NewNS(t).Path(), NoPredefinedNetworks: true,
		GossipPeers: []string{"127.0.0.1:7946"}}); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("GossipPeers without Gossip = %v, want ErrInvalidParameter", err)
	}
	if err := cb.DeleteNetwork(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
}
