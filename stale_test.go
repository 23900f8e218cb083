package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// staleGetStore is a global store whose next Gets of endpoint records (as many as stale says)
// answer that the record is not there, as a Consul server that restarted and answers before it
// has replayed its log may.
type staleGetStore struct {
	kvstore.Store
	stale atomic.Int64
}

func (s *staleGetStore) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	if strings.HasPrefix(key, epobj.KeyPrefix) && s.stale.Add(-1) >= 0 {
		return kvstore.KVPair{}, fmt.Errorf("stale get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	return s.Store.Get(ctx, key)
}

func (s *staleGetStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	return s.Store.(kvstore.Batcher).Batch(ctx, ops)
}

func (s *staleGetStore) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	return s.Store.(kvstore.Leaser).Grant(ctx, ttl)
}

// TestGlobalStaleReadAfterLapse: the host's lease lapses, and when it registers again the
// reads of its endpoints' records go back in time and miss them. The reconcile of its address
// blocks then takes them for reclaimed and frees their addresses; the records are there, and
// the reassert that follows must hold their addresses again, not leave them free for another
// host's endpoint. When the reassert's own reads go back too, its write finds the records
// there, and the addresses it took for them are kept.
func TestGlobalStaleReadAfterLapse(t *testing.T) {
	// The reconcile reads each of the three records once, then each of the four reasserts
	// (at the registration and at the next three sweeps).
	for _, tc := range []struct {
		name  string
		stale int64
	}{{"reconcile", 3}, {"reconcile and every reassert", 3 + 4*3}} {
		t.Run(tc.name, func(t *testing.T) { staleReadAfterLapse(t, tc.stale) })
	}
}

func staleReadAfterLapse(t *testing.T, staleGets int64) {
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := fmt.Sprintf("sr%d", time.Now().UnixNano())
	gs := openEtcd(t, ec.Endpoints(), prefix)
	stale := &staleGetStore{Store: openEtcd(t, ec.Endpoints(), prefix)}
	a := globalFakeHost(t, stale, "host-a", time.Second, 2*time.Second)()
	subnet := netip.MustParsePrefix("10.93.0.0/24")
	g, err := a.NewNetwork(ctx, "g", globalDriver, network.WithSubnet(subnet))
	if err != nil {
		t.Fatal(err)
	}
	// The gateway, e1 and e2 in the host's first block of four; e3 alone in the second.
	want := map[netip.Addr]bool{subnet.Addr().Next(): true}
	for _, name := range []string{"e1", "e2", "e3"} {
		ep, err := g.CreateEndpoint(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		want[ep.Info().IPv4.Addr()] = true
	}
	gi, err := ipamkv.NewGlobal(gs, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if blocks, err := gi.Blocks(ctx, ipam.MakePoolID(ipam.GlobalSpace, subnet)); err != nil || len(blocks) != 2 {
		t.Fatalf("blocks before the lapse: %v (%v), want two of host-a's", blocks, err)
	}

	stale.stale.Store(staleGets)
	revokeLeases(t, ec.Endpoints())
	waitFor(t, 15*time.Second, "host-a registers again and every read it was given went back", func() bool {
		hosts, err := a.Hosts(ctx)
		return err == nil && len(hosts) == 1 && stale.stale.Load() <= 0
	})
	waitFor(t, 15*time.Second, "the global IPAM holds the gateway and the three endpoints' addresses", func() bool {
		return ipamHoldsExactly(ctx, gi, subnet, want)
	}, func() string { return ipamDiff(ctx, gi, subnet, want) })
	time.Sleep(3 * time.Second) // the next sweeps and reasserts
	if !ipamHoldsExactly(ctx, gi, subnet, want) {
		t.Errorf("after the next sweeps: %s", ipamDiff(ctx, gi, subnet, want))
	}
	if got := len(g.Endpoints()); got != 3 {
		t.Errorf("host-a holds %d endpoints, want 3", got)
	}
}
