package consul

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// reapLoop reaps tombstones every reapInterval (with jitter, since every store on the prefix
// does it) until the store closes.
func (s *Store) reapLoop() {
	defer s.wg.Done()
	next := func() time.Duration { return reapInterval/2 + rand.N(reapInterval) }
	t := time.NewTimer(next())
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
		if n, err := s.reap(s.ctx); err != nil {
			s.log.Debug("consul: reap tombstones", "err", err)
		} else if n > 0 {
			s.log.Debug("consul: reaped tombstones", "count", n)
		}
		t.Reset(next())
	}
}

// reap deletes the oldest tombstones beyond the store's limit, each only at the revision it
// read (so a newer delete of the key keeps its tombstone), and raises the tombstone floor to
// the highest revision it removed. It returns how many it removed.
func (s *Store) reap(ctx context.Context) (int, error) {
	var tombs []*api.KVPair
	err := s.call(ctx, func(q *api.QueryOptions) error {
		var err error
		tombs, _, err = s.client.KV().List(s.root+tombDir, q)
		return err
	})
	if err != nil || len(tombs) <= s.tombLimit {
		return 0, err
	}
	slices.SortFunc(tombs, func(a, b *api.KVPair) int { return cmp.Compare(a.ModifyIndex, b.ModifyIndex) })
	victims := tombs[:len(tombs)-s.tombLimit]
	reaped := 0
	for len(victims) > 0 {
		n := min(len(victims), maxTxnOps-1)
		ops := make(api.TxnOps, 0, n+1)
		for _, t := range victims[:n] {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: t.Key, Index: t.ModifyIndex}})
		}
		floor := victims[n-1].ModifyIndex
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{
			Verb:  api.KVSet,
			Key:   s.root + floorKey,
			Value: []byte(strconv.FormatUint(floor, 10)),
		}})
		resp, err := s.txn(ctx, ops)
		if err != nil {
			return reaped, err
		}
		if !resp.ok {
			return reaped, resp.failure() // a tombstone was rewritten meanwhile: next time
		}
		reaped += n
		victims = victims[n:]
	}
	return reaped, nil
}
