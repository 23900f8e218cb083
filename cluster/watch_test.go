package cluster_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
)

// injectStore is a global store whose watches also deliver the events a test sends on inject,
// as a backend would after a server restart.
type injectStore struct {
	kvstore.Store
	inject chan kvstore.Event
}

func (s injectStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	return s.Store.(kvstore.Batcher).Batch(ctx, ops)
}

func (s injectStore) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	return s.Store.(kvstore.Leaser).Grant(ctx, ttl)
}

func (s injectStore) Watch(ctx context.Context, prefix string, from uint64) (<-chan kvstore.Event, error) {
	in, err := s.Store.Watch(ctx, prefix, from)
	if err != nil || prefix != netobj.KeyPrefix {
		return in, err
	}
	out := make(chan kvstore.Event)
	go func() {
		defer close(out)
		for {
			var ev kvstore.Event
			select {
			case e, ok := <-in:
				if !ok {
					return
				}
				ev = e
			case ev = <-s.inject:
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// TestWatchInferredDelete: a delete the store only inferred (a restarted server answering
// before it replayed its log) does not make a host forget a network whose record is still
// there; a delete the store saw does, at once.
func TestWatchInferredDelete(t *testing.T) {
	ctx := t.Context()
	gs := injectStore{Store: openGlobal(t), inject: make(chan kvstore.Event)}
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	ca, err := a.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	ca.Start()
	cb, err := b.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	rec := netobj.Record{ID: netobj.NewID(), Name: "w", Scope: drivers.GlobalScope}
	raw, _ := json.Marshal(rec)
	if err := cb.CreateNetwork(ctx, rec, raw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "host-a adopts w", func() bool {
		adopted, _ := a.side.calls()
		return slices.Contains(adopted, "w")
	})
	gs.inject <- kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: netobj.Key(rec.ID)}, Inferred: true}
	time.Sleep(1500 * time.Millisecond) // the watch's confirmations run every second
	if _, forgot := a.side.calls(); slices.Contains(forgot, rec.ID) {
		t.Fatalf("host-a forgot w on an inferred delete while its record is in the store")
	}
	gs.inject <- kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: netobj.Key(rec.ID)}}
	waitFor(t, 5*time.Second, "host-a forgets w on a delete the store saw", func() bool {
		_, forgot := a.side.calls()
		return slices.Contains(forgot, rec.ID)
	})
}
