package cluster_test

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// endableStore is a bbolt store whose leases a test can end behind their holder's back, as an
// outage longer than the TTL would.
type endableStore struct {
	*boltdb.Store
	mu     sync.Mutex
	leases []*endableLease
}

type endableLease struct {
	kvstore.Lease
	once sync.Once
	done chan struct{}
}

func (l *endableLease) Done() <-chan struct{} { return l.done }

func (l *endableLease) end() { l.once.Do(func() { close(l.done) }) }

func (s *endableStore) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	inner, err := s.Store.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	l := &endableLease{Lease: inner, done: make(chan struct{})}
	s.mu.Lock()
	s.leases = append(s.leases, l)
	s.mu.Unlock()
	return l, nil
}

// endAll ends every lease granted so far; it returns how many.
func (s *endableStore) endAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.leases {
		l.end()
	}
	return len(s.leases)
}

// blocksIPAM is the global IPAM with blocks, counting the suspensions and resumptions.
type blocksIPAM struct {
	*ipam.Global
	suspended, resumed atomic.Int32
}

func (b *blocksIPAM) SuspendBlocks() { b.suspended.Add(1); b.Global.SuspendBlocks() }
func (b *blocksIPAM) ResumeBlocks()  { b.resumed.Add(1); b.Global.ResumeBlocks() }

// TestBlocksSuspendedWhileLapsed: when this host's lease ends (an outage longer than the TTL),
// its address blocks are suspended (others may give them back once they have reclaimed its
// endpoints), and resumed once it has registered again and reconciled them.
func TestBlocksSuspendedWhileLapsed(t *testing.T) {
	bs, err := boltdb.Open(filepath.Join(t.TempDir(), "global.db"), boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	gs := &endableStore{Store: bs}
	g, err := ipamkv.NewGlobal(gs, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	fake := &blocksIPAM{Global: g}
	h := newHost(t, "host-a")
	c, err := cluster.New(t.Context(), cluster.Config{
		Store: gs, Local: h.local, Host: h.name, IPAM: fake, TTL: time.Second, Timeout: 2 * time.Second, Networks: h.side,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	c.Start()
	if n := gs.endAll(); n != 1 {
		t.Fatalf("%d leases granted, want 1", n)
	}
	waitFor(t, 5*time.Second, "the blocks suspended and resumed after the lease ended", func() bool {
		return fake.suspended.Load() == 1 && fake.resumed.Load() == 1
	})
	gs.mu.Lock()
	n := len(gs.leases)
	gs.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d leases granted, want 2 (registered again)", n)
	}
}
