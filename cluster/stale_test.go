package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
)

// staleRegistryStore is a global store whose lists of the registry leave one host out, as
// the reads of a Consul server that restarted and answers before it has replayed its log
// may: that host registered after the state the server answers from.
type staleRegistryStore struct {
	kvstore.Store
	hidden string
	lists  atomic.Int64 // registry lists that left the host out
}

func (s *staleRegistryStore) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	pairs, err := s.Store.List(ctx, prefix)
	if err != nil || !strings.HasPrefix(cluster.HostKeyPrefix, prefix) {
		return pairs, err
	}
	out := pairs[:0:0]
	for _, p := range pairs {
		if p.Key == cluster.HostKeyPrefix+s.hidden {
			s.lists.Add(1)
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *staleRegistryStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	return s.Store.(kvstore.Batcher).Batch(ctx, ops)
}

func (s *staleRegistryStore) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	return s.Store.(kvstore.Leaser).Grant(ctx, ttl)
}

// TestReclaimStaleRegistry: a registry read that misses a live host (it went back in time)
// does not make the sweep reclaim that host's endpoints, nor delete its delete fences: the
// deletes commit only while the host's key is absent. Once the host has left, they go.
func TestReclaimStaleRegistry(t *testing.T) {
	ctx := t.Context()
	gs := openGlobal(t)
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	stale := &staleRegistryStore{Store: gs, hidden: "host-b"}
	ca, err := a.open(t, stale)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	nrec := netobj.Record{ID: netobj.NewID(), Name: "theirs", Scope: drivers.GlobalScope}
	raw, _ := json.Marshal(nrec)
	if err := cb.CreateNetwork(ctx, nrec, raw); err != nil {
		t.Fatal(err)
	}
	n := &fakeNet{id: nrec.ID, store: gs}
	a.side.mu.Lock()
	a.side.nets[nrec.ID] = n
	a.side.mu.Unlock()
	ep := epobj.Record{ID: netobj.NewID(), Name: "web", NetworkID: nrec.ID, Host: "host-b"}
	eb, _ := json.Marshal(ep)
	if _, err := gs.Put(ctx, epobj.Key(nrec.ID, ep.ID), eb); err != nil {
		t.Fatal(err)
	}
	fence := cluster.DeletingKeyPrefix + nrec.ID
	if _, err := gs.Put(ctx, fence, []byte("host-b")); err != nil {
		t.Fatal(err)
	}
	ca.Start()
	present := func(key string) bool {
		_, err := gs.Get(ctx, key)
		if err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	// The sweep runs every second (TTL 1s); the watch's grace before a reclaim is 2s.
	waitFor(t, 10*time.Second, "host-a's registry reads miss host-b for 4s", func() bool {
		return stale.lists.Load() > 0
	})
	time.Sleep(4 * time.Second)
	if !present(epobj.Key(nrec.ID, ep.ID)) || !present(fence) {
		t.Fatalf("with host-b registered: its endpoint's record there %v, its fence there %v; want both", present(epobj.Key(nrec.ID, ep.ID)), present(fence))
	}
	n.mu.Lock()
	got := n.reclaimed
	n.mu.Unlock()
	if len(got) != 0 || len(ca.Reclaimed()) != 0 {
		t.Fatalf("host-b's endpoints reclaimed while it is registered: %v, %v", got, ca.Reclaimed())
	}
	if err := cb.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-a reclaims host-b's endpoint and removes its fence once it left", func() bool {
		return !present(epobj.Key(nrec.ID, ep.ID)) && !present(fence)
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.reclaimed) != 1 || n.reclaimed[0] != "web" {
		t.Errorf("addresses freed for %v, want [web]", n.reclaimed)
	}
}
