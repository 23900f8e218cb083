package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
)

// uncertainKey is a key that a write of unknown outcome may have left, and since when it has
// been found absent (zero: not yet).
type uncertainKey struct {
	netobj.UncertainKey
	absentSince time.Time
}

// Uncertain implements netobj.Records: it queues the keys that a write whose outcome is
// unknown (err matching cnm.ErrUnavailable) may have left, to delete them once the store
// answers. Other errors are ignored.
func (c *Cluster) Uncertain(err error, keys ...netobj.UncertainKey) {
	if !errors.Is(err, errclass.ErrUnavailable) {
		return
	}
	c.mu.Lock()
	for _, k := range keys {
		c.uncertain = append(c.uncertain, uncertainKey{UncertainKey: k})
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// cleanUncertain deletes the keys that writes of unknown outcome may have left, retrying until
// the store answers. Addresses and pools those writes held are then orphans, which the sweep
// frees.
func (c *Cluster) cleanUncertain(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-tick.C:
		}
		c.mu.Lock()
		keys := c.uncertain
		c.uncertain = nil
		c.mu.Unlock()
		var again []uncertainKey
		for i := range keys {
			if !c.deleteUncertain(ctx, &keys[i]) {
				again = append(again, keys[i])
			}
		}
		if len(again) > 0 {
			c.mu.Lock()
			c.uncertain = append(again, c.uncertain...)
			c.mu.Unlock()
		}
	}
}

// deleteUncertain deletes k if it is there (with its expected value); false to try again. A key
// is given up only once it has been absent for orphanGrace: a write that went unanswered can
// still land after the store came back (a server that restarts replays its log, and may answer
// reads before it has), and a late record would be left to no one.
func (c *Cluster) deleteUncertain(ctx context.Context, k *uncertainKey) bool {
	s := c.store
	kv, err := s.Get(ctx, k.Key)
	switch {
	case errors.Is(err, kvstore.ErrKeyNotFound):
		if k.absentSince.IsZero() {
			k.absentSince = time.Now()
		}
		return time.Since(k.absentSince) >= orphanGrace
	case err != nil:
		return false
	case k.Value != nil && string(kv.Value) != string(k.Value):
		return true // someone else's
	}
	err = s.AtomicDelete(ctx, k.Key, kv.Revision)
	if err == nil || errors.Is(err, kvstore.ErrKeyNotFound) || errors.Is(err, kvstore.ErrKeyModified) {
		if err == nil {
			c.noteGlobalRepair(drivers.Repair{Object: "key " + k.Key, Action: "removed", Reason: "left by a write that timed out"})
		}
		return true
	}
	return false
}
