package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// TestStoreEtcdElection runs the rotation lock election on a real etcd, each node with a
// client of its own: the lock holder drives a rotation; then its process dies (its client
// closes without releasing anything, so the lock's lease runs out LockTTL later), and another
// node takes the lock and drives the next rotation. It skips without an etcd binary, except
// under CI=true (see internal/storetest).
func TestStoreEtcdElection(t *testing.T) {
	ec := storetest.StartEtcd(t)
	const lockTTL = 2 * time.Second
	clients := map[string]*etcd.Store{}
	open := func(name string) *etcd.Store {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		s, err := etcd.Open(ctx, etcd.Config{Endpoints: ec.Endpoints(), Prefix: "gossip-test/", LockTTL: lockTTL})
		if err != nil {
			t.Fatalf("open etcd for %s: %v", name, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		clients[name] = s
		return s
	}
	for _, name := range []string{"node-00", "node-01", "node-02"} {
		open(name)
	}
	var gate phaseGate
	gate.budget.allow(1)
	c := newCluster(t, 3, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		cfg.testAdvance = gate.hook
		cfg.Store = clients[cfg.NodeName]
	})
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes, 1) })
	reader := open("reader")
	st, first := storeState(t, reader, DefaultStorePrefixBase+DefaultClusterLabel)
	if st.Epoch != 1 || st.Phase != phaseDone {
		t.Fatalf("etcd holds epoch %d %s, want 1 done", st.Epoch, st.Phase)
	}
	t.Logf("rotation 1 driven by %s", first)

	// The driver's process dies: its client goes away without a word (Close abandons the
	// lock's lease), then the node stops.
	killed := time.Now()
	if err := clients[first].Close(); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.nodes {
		if nd.Name() == first {
			if err := nd.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	gate.budget.allow(1)
	live := c.live()
	waitFor(t, 30*time.Second, func() error { return keysAgree(live, 2) })
	st, next := storeState(t, reader, DefaultStorePrefixBase+DefaultClusterLabel)
	t.Logf("rotation 2 driven by %s, done %v after %s died (lock TTL %v)", next, time.Since(killed).Round(time.Millisecond), first, lockTTL)
	if st.Epoch != 2 || next == first {
		t.Errorf("etcd holds epoch %d by %s, want 2 by another node than %s", st.Epoch, next, first)
	}
	if s := c.totalStats(); s.DecryptFailures != 0 {
		t.Errorf("%d decrypt failures", s.DecryptFailures)
	}
}
